#!/usr/bin/env python3
"""dashboard-check.py: proves a Grafana dashboard without Grafana.

  scripts/lab/dashboard-check.py [--prometheus URL] [--rate-interval 1m]
                                 [--allow-absent METRIC,...] DASHBOARD.json

Always checks the structure: title, uid, schemaVersion, the Prometheus
datasource (a `datasource` variable or a `${DS_PROMETHEUS}` input) on every
panel and target, unique panel ids (rows and panels inside collapsed rows
included), gridPos inside the 24-column grid and not overlapping, every
panel with targets that have a refId (unique in the panel) and an expr, and
every `$variable` an expr uses defined.

With --prometheus (the lab's, after traffic: `scripts/lab.sh smoke` runs
it), also runs every variable's label_values() query and every target's
expr as an instant query, with the variables at their "All" value and
$__rate_interval at --rate-interval, and fails when one returns no sample,
or only NaN (a quantile of a histogram that saw nothing in the window).
A target fails as "absent" when a metric it names was never scraped at
all (a build without it); --allow-absent lists metrics for which that is
reported but tolerated. Exit 0: all good; 1: a problem; 2: bad usage.
"""

import argparse
import json
import math
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

DS_UIDS = {"${datasource}", "$datasource", "${DS_PROMETHEUS}", "$DS_PROMETHEUS"}
BUILTIN_VARS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s", "__range_ms"}
PANEL_TYPES_WITHOUT_TARGETS = {"row", "text", "news", "dashlist", "alertlist"}
VAR_RE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}?")
METRIC_RE = re.compile(r"\b((?:locsvc|proxy_shim)_[A-Za-z0-9_:]*)")


class Report:
    def __init__(self):
        self.problems = []

    def bad(self, msg):
        self.problems.append(msg)


def flatten(panels):
    """Every panel, rows and the panels inside collapsed rows included."""
    for p in panels:
        yield p
        yield from flatten(p.get("panels") or [])


def check_datasource(ds, where, rep, required=True):
    if ds is None:
        if required:
            rep.bad(f"{where}: no datasource")
        return
    if isinstance(ds, str):
        uid, typ = ds, "prometheus"
    elif isinstance(ds, dict):
        uid, typ = ds.get("uid"), ds.get("type")
    else:
        rep.bad(f"{where}: datasource is neither an object nor a string")
        return
    if typ != "prometheus" or uid not in DS_UIDS:
        rep.bad(f"{where}: datasource {ds!r} is not the templated Prometheus datasource")


def check_structure(d, rep):
    for key, typ in (("title", str), ("uid", str), ("schemaVersion", int), ("panels", list)):
        if not isinstance(d.get(key), typ):
            rep.bad(f"dashboard: `{key}` missing or not a {typ.__name__}")
    if isinstance(d.get("uid"), str) and not (0 < len(d["uid"]) <= 40):
        rep.bad("dashboard: uid must have 1 to 40 characters")
    if isinstance(d.get("schemaVersion"), int) and not 36 <= d["schemaVersion"] <= 41:
        rep.bad(f"dashboard: schemaVersion {d['schemaVersion']} is not a current one (36..41)")
    if d.get("id") is not None:
        rep.bad("dashboard: `id` must be null in a file meant for import or provisioning")

    variables = (d.get("templating") or {}).get("list") or []
    names = [v.get("name") for v in variables]
    if len(names) != len(set(names)):
        rep.bad(f"templating: duplicate variable names {names}")
    ds_var = any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in variables)
    ds_input = any(i.get("name") == "DS_PROMETHEUS" and i.get("pluginId") == "prometheus"
                   for i in d.get("__inputs") or [])
    if not (ds_var or ds_input):
        rep.bad("dashboard: neither a `datasource` variable (type datasource, query prometheus) "
                "nor a DS_PROMETHEUS input")
    for v in variables:
        if v.get("type") == "query":
            check_datasource(v.get("datasource"), f"variable {v.get('name')}", rep)
            q = v.get("query")
            if isinstance(q, dict):
                q = q.get("query")
            if not q:
                rep.bad(f"variable {v.get('name')}: no query")

    panels = list(flatten(d.get("panels") or []))
    ids = [p.get("id") for p in panels]
    for i in ids:
        if not isinstance(i, int) or i <= 0:
            rep.bad(f"panel id {i!r} is not a positive integer")
    dup = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if dup:
        rep.bad(f"duplicate panel ids: {dup}")

    boxes = []
    for p in panels:
        where = f"panel {p.get('id')} ({p.get('title')!r})"
        if not p.get("type"):
            rep.bad(f"{where}: no type")
        if not p.get("title") and p.get("type") != "row":
            rep.bad(f"{where}: no title")
        g = p.get("gridPos")
        if not isinstance(g, dict) or not all(isinstance(g.get(k), int) for k in "hwxy"):
            rep.bad(f"{where}: gridPos needs integer h, w, x, y")
        else:
            if g["w"] < 1 or g["h"] < 1 or g["x"] < 0 or g["y"] < 0 or g["x"] + g["w"] > 24:
                rep.bad(f"{where}: gridPos {g} is outside the 24-column grid")
            boxes.append((where, g))
        if p.get("type") in PANEL_TYPES_WITHOUT_TARGETS:
            continue
        check_datasource(p.get("datasource"), where, rep)
        targets = p.get("targets")
        if not isinstance(targets, list) or not targets:
            rep.bad(f"{where}: no targets")
            continue
        refs = [t.get("refId") for t in targets]
        if any(not r for r in refs) or len(refs) != len(set(refs)):
            rep.bad(f"{where}: refIds must be set and unique: {refs}")
        for t in targets:
            tw = f"{where} target {t.get('refId')}"
            check_datasource(t.get("datasource"), tw, rep, required=False)
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                rep.bad(f"{tw}: no expr")
                continue
            for name in VAR_RE.findall(expr):
                if name not in BUILTIN_VARS and name not in names:
                    rep.bad(f"{tw}: uses undefined variable ${name}")
    for i, (wa, a) in enumerate(boxes):
        for wb, b in boxes[i + 1:]:
            if (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                    and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]):
                rep.bad(f"{wa} and {wb} overlap")
    return panels, variables


# ---------------------------------------------------------------- live

def api(prom, path, **params):
    url = f"{prom.rstrip('/')}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    try:
        with urllib.request.urlopen(url, timeout=15) as r:
            doc = json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            doc = json.loads(e.read())
        except ValueError:
            raise RuntimeError(f"{path}: HTTP {e.code}") from e
    if doc.get("status") != "success":
        raise RuntimeError(f"{doc.get('errorType', 'error')}: {doc.get('error', doc)}")
    return doc["data"]


def substitute(expr, variables, rate_interval):
    values = {"__rate_interval": rate_interval, "__interval": "15s", "__range": "1h",
              "__interval_ms": "15000", "__range_s": "3600", "__range_ms": "3600000"}
    for v in variables:
        values[v.get("name")] = v.get("allValue") or ".*"

    def repl(m):
        return values.get(m.group(1), m.group(0))

    return VAR_RE.sub(repl, expr)


def samples(result):
    if result["resultType"] in ("vector", "matrix"):
        return [s["value"][1] for s in result["result"] if "value" in s]
    if result["resultType"] == "scalar":
        return [result["result"][1]]
    return []


def check_live(prom, panels, variables, rate_interval, allow_absent, rep):
    known = set(api(prom, "/api/v1/label/__name__/values"))
    rows = []
    for v in variables:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", q or "")
        if not m:
            rows.append(("var", v["name"], "", "SKIP", f"not a label_values() query: {q}"))
            continue
        data = api(prom, f"/api/v1/label/{m.group(2)}/values", **{"match[]": m.group(1)})
        status = "ok" if data else "NO DATA"
        if not data:
            rep.bad(f"variable {v['name']}: {q} has no values")
        rows.append(("var", v["name"], "", status, ", ".join(data[:6])))
    for p in panels:
        if p.get("type") in PANEL_TYPES_WITHOUT_TARGETS:
            continue
        for t in p.get("targets") or []:
            expr = substitute(t.get("expr", ""), variables, rate_interval)
            where = (str(p.get("id")), p.get("title", ""), t.get("refId", ""))
            try:
                vals = samples(api(prom, "/api/v1/query", query=expr))
            except RuntimeError as e:
                rep.bad(f"panel {where[0]} ({where[1]!r}) {where[2]}: query failed: {e}")
                rows.append((*where, "ERROR", str(e)[:80]))
                continue
            real = [x for x in vals if not math.isnan(float(x))]
            if real:
                rows.append((*where, "ok", f"{len(vals)} series"))
                continue
            absent = sorted({m for m in METRIC_RE.findall(expr) if m not in known})
            why = "no data" if not vals else f"only NaN ({len(vals)} series: nothing observed in the window)"
            if absent and all(a in allow_absent for a in absent):
                rows.append((*where, "ABSENT", f"allowed: {', '.join(absent)} not exported"))
                continue
            if absent:
                why = f"no data: {', '.join(absent)} never scraped (no series yet, or not in this build)"
            rep.bad(f"panel {where[0]} ({where[1]!r}) {where[2]}: {why}")
            rows.append((*where, "NO DATA", why))
    width = max(len(r[1]) for r in rows) if rows else 10
    for r in rows:
        print(f"  {r[0]:>4} {r[1]:<{width}} {r[2]:<2} {r[3]:<8} {r[4]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dashboard")
    ap.add_argument("--prometheus", help="base URL of a Prometheus with the dashboard's metrics")
    ap.add_argument("--rate-interval", default="1m", help="value of $__rate_interval (default 1m)")
    ap.add_argument("--allow-absent", default="", help="comma-separated metrics that may be missing")
    a = ap.parse_args()
    try:
        with open(a.dashboard) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        print(f"dashboard-check: {a.dashboard}: {e}", file=sys.stderr)
        return 1
    rep = Report()
    panels, variables = check_structure(d, rep)
    n_targets = sum(len(p.get("targets") or []) for p in panels)
    print(f"{a.dashboard}: {len(panels)} panels, {n_targets} targets, {len(variables)} variables; "
          f"structure {'ok' if not rep.problems else 'BAD'}")
    if a.prometheus and not rep.problems:
        allow = {m.strip() for m in a.allow_absent.split(",") if m.strip()}
        try:
            check_live(a.prometheus, panels, variables, a.rate_interval, allow, rep)
        except (OSError, RuntimeError, urllib.error.URLError) as e:
            rep.bad(f"Prometheus at {a.prometheus}: {e}")
    for p in rep.problems:
        print(f"dashboard-check: {p}", file=sys.stderr)
    if rep.problems:
        print(f"dashboard-check: FAILED ({len(rep.problems)} problem(s))", file=sys.stderr)
        return 1
    print("dashboard-check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
