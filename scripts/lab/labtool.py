#!/usr/bin/env python3
"""labtool.py: small helpers of scripts/lab.sh (standard library only).

  labtool.py free-ports N                 N distinct loopback ports, free on TCP and UDP now
  labtool.py sip-ping PORT TIMEOUT        wait until a SIP server answers OPTIONS on udp 127.0.0.1:PORT
  labtool.py http-ok URL TIMEOUT          wait until GET URL answers 200
  labtool.py targets PROM N TIMEOUT       wait until Prometheus has N active targets, all up
  labtool.py query PROM EXPR              print an instant query's samples, one a line
  labtool.py wait-expr PROM EXPR TIMEOUT  wait until EXPR returns at least one sample
  labtool.py wait-alert PROM NAME LABELS STATE TIMEOUT
        wait until alert NAME with LABELS (k=v,k=v) is in STATE: firing, pending,
        or inactive (neither pending nor firing)
  labtool.py alerts PROM                  print the active alerts, one a line

Every wait is bounded: exit 1 with a message on stderr when TIMEOUT (seconds)
passes; PROM is Prometheus' base URL (http://127.0.0.1:PORT).
"""

import json
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def die(msg, code=1):
    print(f"labtool: {msg}", file=sys.stderr)
    sys.exit(code)


def free_ports(n):
    held, ports = [], []
    try:
        for _ in range(n * 50):
            if len(ports) == n:
                break
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            t = socket.socket()
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                u.close()
                t.close()
                continue
            held += [u, t]
            ports.append(port)
    finally:
        for s in held:
            s.close()
    if len(ports) < n:
        die(f"found only {len(ports)} of {n} free ports")
    print(" ".join(map(str, ports)))


def sip_ping(port, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    me = s.getsockname()[1]
    s.settimeout(0.5)
    deadline = time.time() + timeout
    n = 0
    while time.time() < deadline:
        n += 1
        msg = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK-lab-{n}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=lab\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: lab-probe-{n}@127.0.0.1\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        try:
            s.sendto(msg.encode(), ("127.0.0.1", port))
            if s.recv(65535).startswith(b"SIP/2.0 "):
                return
        except OSError:
            time.sleep(0.2)
    die(f"no SIP answer on udp 127.0.0.1:{port} after {timeout} s")


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def api(prom, path, **params):
    url = f"{prom}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    status, body = get(url)
    doc = json.loads(body)
    if doc.get("status") != "success":
        raise RuntimeError(f"{path}: {doc.get('error', doc)}")
    return doc["data"]


def until(timeout, what, probe):
    """Calls probe() about twice a second until it returns a true value."""
    deadline = time.time() + timeout
    last = None
    while True:
        try:
            got = probe()
            if got:
                return got
        except (OSError, RuntimeError, ValueError, urllib.error.URLError) as e:
            last = e
        if time.time() >= deadline:
            extra = f" (last error: {last})" if last else ""
            die(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(0.5)


def http_ok(url, timeout):
    until(timeout, f"{url} to answer 200", lambda: get(url, 2)[0] == 200)


def targets(prom, n, timeout):
    def probe():
        active = api(prom, "/api/v1/targets", state="active")["activeTargets"]
        return len(active) == n and all(t["health"] == "up" for t in active)

    until(timeout, f"{n} scrape targets up at {prom}", probe)


def fmt_sample(s):
    labels = ",".join(f'{k}="{v}"' for k, v in sorted(s["metric"].items()))
    return f"{{{labels}}} {s['value'][1]}"


def query(prom, expr):
    for s in api(prom, "/api/v1/query", query=expr)["result"]:
        print(fmt_sample(s))


def wait_expr(prom, expr, timeout):
    until(timeout, f"data from `{expr}`", lambda: api(prom, "/api/v1/query", query=expr)["result"])


def parse_labels(spec):
    out = {}
    for kv in filter(None, spec.split(",")):
        k, _, v = kv.partition("=")
        out[k] = v
    return out


def alert_state(prom, name, labels):
    """'firing', 'pending' or 'inactive' for the alert with these labels."""
    states = set()
    for a in api(prom, "/api/v1/alerts")["alerts"]:
        lab = a["labels"]
        if lab.get("alertname") == name and all(lab.get(k) == v for k, v in labels.items()):
            states.add(a["state"])
    for s in ("firing", "pending"):
        if s in states:
            return s
    return "inactive"


def wait_alert(prom, name, spec, state, timeout):
    if state not in ("firing", "pending", "inactive"):
        die(f"unknown state {state}", 2)
    labels = parse_labels(spec)
    until(timeout, f"alert {name}{{{spec}}} to be {state}", lambda: alert_state(prom, name, labels) == state)


def alerts(prom):
    for a in api(prom, "/api/v1/alerts")["alerts"]:
        lab = dict(a["labels"])
        name = lab.pop("alertname", "?")
        labels = ",".join(f"{k}={v}" for k, v in sorted(lab.items()))
        print(f"{a['state']:8} {name} {{{labels}}} since {a.get('activeAt', '?')}")


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmd, args = argv[1], argv[2:]
    try:
        if cmd == "free-ports" and len(args) == 1:
            free_ports(int(args[0]))
        elif cmd == "sip-ping" and len(args) == 2:
            sip_ping(int(args[0]), float(args[1]))
        elif cmd == "http-ok" and len(args) == 2:
            http_ok(args[0], float(args[1]))
        elif cmd == "targets" and len(args) == 3:
            targets(args[0], int(args[1]), float(args[2]))
        elif cmd == "query" and len(args) == 2:
            query(*args)
        elif cmd == "wait-expr" and len(args) == 3:
            wait_expr(args[0], args[1], float(args[2]))
        elif cmd == "wait-alert" and len(args) == 5:
            wait_alert(args[0], args[1], args[2], args[3], float(args[4]))
        elif cmd == "alerts" and len(args) == 1:
            alerts(args[0])
        else:
            print(__doc__, file=sys.stderr)
            sys.exit(2)
    except (OSError, RuntimeError, urllib.error.URLError) as e:
        die(f"{cmd}: {e}")


if __name__ == "__main__":
    main(sys.argv)
