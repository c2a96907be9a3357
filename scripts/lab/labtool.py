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
  labtool.py trace SPANS FROM METHOD STATUS RPC SHIM LOCSVCS AORS TIMEOUT
        wait until otlp-sink's file SPANS (JSON lines), past byte FROM, holds
        one trace of a SIP METHOD answered STATUS for one of AORS (a,b,...):
        the `SIP METHOD` root of service SHIM, its client span RPC
        (locsvc.v1.Location/Save), the server span RPC of a service in
        LOCSVCS (a,b) whose parent is that client span and whose `aor` is the
        AoR, and `member` spans below it; print that trace as a tree, then
        how many of SHIM's RPC calls past FROM have such a server span below
        them (a warning, not a failure, when some have none)

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
    sys.stdout.flush()
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


# OTLP span kinds as otlp-sink writes them.
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
SERVER, CLIENT = 2, 3


def read_spans(path, start):
    """The spans in otlp-sink's file past byte `start`; a line still being
    written (no newline yet) is left for the next read, and one that `start`
    falls inside (the file's size taken while a line was being written) is
    skipped."""
    try:
        with open(path, "rb") as f:
            partial = False
            if start > 0:
                f.seek(start - 1)
                partial = f.read(1) != b"\n"
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")[:-1]
    if partial:
        lines = lines[1:]
    spans = []
    for line in lines:
        if line.strip():
            spans.append(json.loads(line))
    return spans


def is_span(s, name, kind, services):
    return s["name"] == name and s["kind"] == kind and s["service"] in services


def kind_of(s):
    return KINDS.get(s["kind"], s["kind"])


def find_trace(spans, method, status, rpc, shim, locsvcs, aors):
    """(trace spans, the server span) of the first AoR in `aors` whose
    request forms a complete trace, else (None, why not)."""
    by_id = {(s["trace_id"], s["span_id"]): s for s in spans}
    names = "/".join(sorted(locsvcs))
    why = f"no {rpc} server span of {names} for {aors[0] if len(aors) == 1 else 'any of the AoRs'}"
    for aor in aors:
        quoted = json.dumps(aor)  # locsvc records the AoR Debug-quoted
        for srv in spans:
            if not is_span(srv, rpc, SERVER, locsvcs) or srv["attributes"].get("aor") != quoted:
                continue
            tid = srv["trace_id"]
            client = by_id.get((tid, srv["parent_span_id"]))
            if not client:
                why = (
                    f"the parent {srv['parent_span_id'] or '-'} of {srv['service']}'s span "
                    f"{srv['span_id']} is not (yet) in the file"
                )
                continue
            if not is_span(client, rpc, CLIENT, {shim}):
                why = (
                    f"the parent of {srv['service']}'s span is {client['service']} {client['name']} "
                    f"({kind_of(client)}), not {shim}'s client span {rpc}"
                )
                continue
            root = by_id.get((tid, client["parent_span_id"]))
            if not root:
                why = (
                    f"the parent {client['parent_span_id'] or '-'} of {shim}'s client span "
                    f"{client['span_id']} is not (yet) in the file"
                )
                continue
            if not is_span(root, f"SIP {method}", SERVER, {shim}) or root["parent_span_id"]:
                why = (
                    f"the client span's parent is {root['service']} {root['name']} ({kind_of(root)}, "
                    f"parent {root['parent_span_id'] or '-'}), not {shim}'s root `SIP {method}`"
                )
                continue
            code = root["attributes"].get("sip.status_code")
            if code != status:
                why = f"the `SIP {method}` root has sip.status_code {code!r}, not {status}"
                continue
            trace = [s for s in spans if s["trace_id"] == tid]
            if not any(s["name"] == "member" and descends(s, srv, by_id) for s in trace):
                why = f"no `member` span below {srv['service']}'s {rpc} span {srv['span_id']} (yet)"
                continue
            return trace, srv
    return None, why


def descends(span, ancestor, by_id):
    seen = set()
    while span["span_id"] != ancestor["span_id"]:
        if span["span_id"] in seen or not span["parent_span_id"]:
            return False
        seen.add(span["span_id"])
        span = by_id.get((span["trace_id"], span["parent_span_id"]))
        if span is None:
            return False
    return True


def print_trace(trace, srv, method):
    ids = {s["span_id"] for s in trace}
    children = {}
    for s in trace:
        parent = s["parent_span_id"] if s["parent_span_id"] in ids else ""
        children.setdefault(parent, []).append(s)
    services = len({s["service"] for s in trace})
    aor = srv["attributes"].get("aor")
    print(f"trace {srv['trace_id']}: {method} of {aor}, {len(trace)} spans, {services} services")

    def show(s, depth):
        attrs = " ".join(f"{k}={v}" for k, v in sorted(s["attributes"].items()))
        parent = s["parent_span_id"] or "-"
        if s["parent_span_id"] and s["parent_span_id"] not in ids:
            parent += " (not in this trace)"
        print(f"{'  ' * depth}{s['service']}: {s['name']} [{kind_of(s)}] span {s['span_id']} parent {parent}  {attrs}")
        for c in children.get(s["span_id"], []):
            show(c, depth + 1)

    for s in children.get("", []):
        show(s, 1)


def coverage(spans, rpc, shim, locsvcs, quiet=False):
    """How many of SHIM's RPC client spans in `spans` have a server span of
    LOCSVCS below them: at ratio 1 every one should. Information only:
    prints the count (with a warning when some lack one) and returns True,
    or, when `quiet` and some lack one, prints nothing and returns False."""
    calls = {(s["trace_id"], s["span_id"]) for s in spans if is_span(s, rpc, CLIENT, {shim})}
    served = {(s["trace_id"], s["parent_span_id"]) for s in spans if is_span(s, rpc, SERVER, locsvcs)}
    roots = sum(1 for s in spans if s["service"] in locsvcs and s["name"] == "member" and not s["parent_span_id"])
    n, m = len(calls), len(calls & served)
    if quiet and (m < n or roots):
        return False
    names = "/".join(sorted(locsvcs))
    print(f"{shim}'s {rpc} calls in the file since the step: {n}, with {names}'s server span below: {m}")
    if m < n or roots:
        print(
            f"warning: {n - m} of them without a server span; {roots} `member` span(s) of {names} "
            "as trace roots (member operations outside any request's span)"
        )
    return True


def trace(path, start, method, status, rpc, shim, locsvcs, aors, timeout):
    locsvcs = set(filter(None, locsvcs.split(",")))
    aors = list(filter(None, aors.split(",")))
    last = ["nothing read yet"]

    def probe():
        spans = read_spans(path, start)
        spans_of_trace, server_or_why = find_trace(spans, method, status, rpc, shim, locsvcs, aors)
        if spans_of_trace is None:
            clients = sum(1 for s in spans if is_span(s, rpc, CLIENT, {shim}))
            servers = sum(1 for s in spans if is_span(s, rpc, SERVER, locsvcs))
            last[0] = (
                f"{len(spans)} spans since byte {start}, {clients} {shim} client and {servers} "
                f"{'/'.join(sorted(locsvcs))} server spans {rpc}; {server_or_why}"
            )
            return None
        return spans_of_trace, server_or_why

    deadline = time.time() + timeout
    while True:
        found = probe()
        if found:
            print_trace(*found, method)
            # The step's other requests (all answered by now): two export
            # intervals for their spans to arrive, then up to two more while
            # some still lack a server span, before counting.
            time.sleep(2.5)
            settle = time.time() + 2
            while not coverage(read_spans(path, start), rpc, shim, locsvcs, quiet=time.time() < settle):
                time.sleep(0.5)
            return
        if time.time() >= deadline:
            die(f"timed out after {timeout} s waiting for the {method} trace in {path}: {last[0]}")
        time.sleep(0.5)


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
        elif cmd == "trace" and len(args) == 9:
            trace(args[0], int(args[1]), *args[2:8], float(args[8]))
        else:
            print(__doc__, file=sys.stderr)
            sys.exit(2)
    except (OSError, RuntimeError, ValueError, urllib.error.URLError) as e:
        die(f"{cmd}: {e}")


if __name__ == "__main__":
    main(sys.argv)
