#!/usr/bin/env python3
"""summary.md of a compare.sh run: python3 summarize.py OUT_DIR > OUT_DIR/summary.md

Reads OUT_DIR/steps.tsv, rows.tsv and machine.txt (see README.md for what each
figure means).
"""
import statistics
import sys
from collections import defaultdict

out = sys.argv[1]
KINDS = ("register", "invite-relay", "invite-302")
LADDER = set(KINDS)


def read_tsv(name):
    try:
        lines = [l.rstrip("\n").split("\t") for l in open(f"{out}/{name}") if l.strip()]
    except OSError:
        return []
    head = lines[0]
    return [dict(zip(head, l)) for l in lines[1:]]


steps = read_tsv("steps.tsv")
rows = read_tsv("rows.tsv")
for s in steps:
    for k in ("run", "rate", "calls", "ok", "failed"):
        s[k] = int(s[k])
    s["clean"] = s["failed"] == 0 and s["ok"] == s["calls"]

targets = list(dict.fromkeys(s["target"] for s in steps))
med = statistics.median


def num(x):
    try:
        return float(x)
    except ValueError:
        return float("nan")


def fmt(x, digits=0):
    if x is None or x != x:
        return "–"
    return f"{x:.{digits}f}"


# (target, kind) -> run -> [steps in ladder order]
ladders = defaultdict(lambda: defaultdict(list))
for s in steps:
    if s["kind"] in LADDER:
        ladders[(s["target"], s["kind"])][s["run"]].append(s)


def best(target, kind):
    """Per run: highest clean rate (0 if the first step failed) and whether
    the ladder never failed (so the limit lies above its top rate)."""
    per_run = {}
    for run, ss in sorted(ladders[(target, kind)].items()):
        clean = [s["rate"] for s in ss if s["clean"]]
        per_run[run] = (max(clean) if clean else 0, all(s["clean"] for s in ss))
    return per_run


def at_rate(target, kind, rate, clean_only=True):
    return [s for ss in ladders[(target, kind)].values() for s in ss
            if s["rate"] == rate and (s["clean"] or not clean_only)]


headline = {}
for (target, kind) in ladders:
    per_run = best(target, kind)
    if not per_run:
        continue
    rates = [r for r, _ in per_run.values()]
    m = med(rates)
    # p99 and achieved rate at the median best rate (or the nearest clean step below it).
    clean_rates = sorted({s["rate"] for ss in ladders[(target, kind)].values() for s in ss if s["clean"]})
    at = max([r for r in clean_rates if r <= m], default=None)
    ss = at_rate(target, kind, at) if at is not None else []
    headline[(target, kind)] = {
        "per_run": per_run,
        "median": m,
        "at": at,
        "p99": med(num(s["p99_ms"]) for s in ss) if ss else None,
        "p50": med(num(s["p50_ms"]) for s in ss) if ss else None,
        "achieved": med(num(s["achieved_cps"]) for s in ss) if ss else None,
        "ceiling": all(c for _, c in per_run.values()),
    }


def baseline(target, kind):
    """The Kamailio (target, kind) a shim (target, kind) is compared with."""
    if target.startswith("kamailio"):
        return None
    order = {
        "register": [("kamailio", "register"), ("kamailio-tm", "register"),
                     ("kamailio-redirect", "register")],
        "invite-relay": [("kamailio", "invite-relay"), ("kamailio-tm", "invite-relay")],
        "invite-302": [("kamailio-redirect", "invite-302"), ("kamailio", "invite-relay"),
                       ("kamailio-tm", "invite-relay")],
    }[kind]
    return next((b for b in order if b in headline), None)


p = print
machine = {}
try:
    for l in open(f"{out}/machine.txt"):
        k, _, v = l.rstrip("\n").partition(": ")
        machine[k] = v
except OSError:
    pass

p("# SIP benchmark: Kamailio p_usrloc vs proxy-shim + locsvc (same MariaDB layout)\n")
p("Produced by `benches/sip/compare.sh`; what each figure means: `benches/sip/README.md`.")
p("sipp, the SIP server(s), the UAS and three MariaDB servers all share this machine's cores:")
p("read the figures as a comparison on one box, not as capacity planning.\n")
p("## Machine and versions\n")
for k, v in machine.items():
    p(f"- **{k}**: {v}")

p("\n## Highest rate without a failed call\n")
p("Per target and kind: the highest target rate (calls/s) whose sipp run had no failed or missing")
p("call, per run and its median over runs; p50/p99 response times and the achieved rate at that")
p("median step (median over the runs that passed it). `≥` = the ladder never failed: the limit is")
p("above its top rate.\n")
p("| target | kind | per run | median | achieved cps | p50 ms | p99 ms |")
p("|---|---|---|---|---|---|---|")
for target in targets:
    for kind in KINDS:
        h = headline.get((target, kind))
        if not h:
            continue
        per = ", ".join(("≥" if c else "") + str(r) for r, c in h["per_run"].values())
        p(f"| {target} | {kind} | {per} | {'≥' if h['ceiling'] else ''}{fmt(h['median'])} | "
          f"{fmt(h['achieved'])} | {fmt(h['p50'])} | {fmt(h['p99'])} |")

ratio_lines = []
for target in targets:
    for kind in KINDS:
        h = headline.get((target, kind))
        b = baseline(target, kind)
        if not h or not b:
            continue
        hb = headline[b]
        r = h["median"] / hb["median"] if hb["median"] else float("nan")
        # p99 at the highest rate both passed in every run they reached it.
        common = sorted({s["rate"] for ss in ladders[(target, kind)].values() for s in ss if s["clean"]}
                        & {s["rate"] for ss in ladders[b].values() for s in ss if s["clean"]})
        cr = common[-1] if common else None
        p99s = p99b = None
        if cr is not None:
            p99s = med(num(s["p99_ms"]) for s in at_rate(target, kind, cr))
            p99b = med(num(s["p99_ms"]) for s in at_rate(b[0], b[1], cr))
        note = "" if b[1] == kind else f" (baseline does {b[1]}: different work)"
        bound = " (lower bound: a ladder never failed)" if h["ceiling"] or hb["ceiling"] else ""
        ratio_lines.append(
            f"| {target} / {b[0]} | {kind}{note} | {fmt(h['median'])} / {fmt(hb['median'])} = "
            f"**{fmt(r, 2)}**{bound} | {fmt(cr)} | {fmt(p99s)} / {fmt(p99b)} |")
if ratio_lines:
    p("\n## Ratios shim / Kamailio\n")
    p("Median highest clean rate of the shim target over its Kamailio baseline (same kind of work),")
    p("and the p99 of both at the highest rate both passed cleanly (a like-for-like latency point).\n")
    p("| pair | kind | best rate ratio | common rate | p99 ms shim / Kamailio |")
    p("|---|---|---|---|---|")
    for l in ratio_lines:
        p(l)

# Digest auth on / off: shim-auth (one call = REGISTER, 401, REGISTER with the
# answer, 200) against shim-redirect (one call = REGISTER, 200) of the same run.
ha, hr = headline.get(("shim-auth", "register")), headline.get(("shim-redirect", "register"))
if ha and hr:
    p("\n## Digest auth on / off (shim-auth / shim-redirect, REGISTER)\n")
    p("shim-auth's call is one registration with its challenge: REGISTER, 401, REGISTER with the")
    p("digest answer, 200 (two SIP transactions, one credentials lookup and one Save); shim-redirect's")
    p("is REGISTER, 200. Rates are registrations/s; response times run from the first REGISTER to the")
    p("200 (two round trips with auth on).\n")
    r = ha["median"] / hr["median"] if hr["median"] else float("nan")
    bound = " (lower bound: a ladder never failed)" if ha["ceiling"] or hr["ceiling"] else ""
    p(f"Highest clean rate, auth on / off: {fmt(ha['median'])} / {fmt(hr['median'])} = "
      f"**{fmt(r, 2)}**{bound}\n")
    common = sorted({s["rate"] for ss in ladders[("shim-auth", "register")].values() for s in ss if s["clean"]}
                    & {s["rate"] for ss in ladders[("shim-redirect", "register")].values() for s in ss if s["clean"]})
    p("| rate | p50 ms on / off | p99 ms on / off | achieved cps on / off |")
    p("|---|---|---|---|")
    for rate in common:
        on, off = at_rate("shim-auth", "register", rate), at_rate("shim-redirect", "register", rate)
        m = lambda ss, k: med(num(s[k]) for s in ss)
        p(f"| {rate} | {fmt(m(on, 'p50_ms'))} / {fmt(m(off, 'p50_ms'))} | "
          f"{fmt(m(on, 'p99_ms'))} / {fmt(m(off, 'p99_ms'))} | "
          f"{fmt(m(on, 'achieved_cps'))} / {fmt(m(off, 'achieved_cps'))} |")

p("\n## Every step (median over the runs that reached it)\n")
for target in targets:
    for kind in KINDS:
        if (target, kind) not in ladders:
            continue
        by_rate = defaultdict(list)
        for ss in ladders[(target, kind)].values():
            for s in ss:
                by_rate[s["rate"]].append(s)
        runs = len(ladders[(target, kind)])
        p(f"\n### {target}, {kind}\n")
        p("| rate | calls | ok | failed (late / other answer) | retrans | achieved cps | p50 ms | p99 ms | runs clean |")
        p("|---|---|---|---|---|---|---|---|---|")
        for rate in sorted(by_rate):
            ss = by_rate[rate]
            m = lambda k: med(num(s[k]) for s in ss)
            p(f"| {rate} | {ss[0]['calls']} | {fmt(m('ok'))} | {fmt(m('failed'))} "
              f"({fmt(m('timed_out'))} / {fmt(m('unexpected'))}) | {fmt(m('retrans'))} | "
              f"{fmt(m('achieved_cps'))} | {fmt(m('p50_ms'))} | {fmt(m('p99_ms'))} | "
              f"{sum(s['clean'] for s in ss)}/{runs} |")

probes = read_tsv("probe.tsv")


def probe_tables(heading, rows, cell):
    """One table per kind of `rows`: a line per rate, a column per target,
    each cell `cell` of that target's runs at that rate (– when none)."""
    for kind in dict.fromkeys(r["kind"] for r in rows):
        of_kind = [r for r in rows if r["kind"] == kind]
        ts = list(dict.fromkeys(r["target"] for r in of_kind))
        p(f"\n{heading} {kind}\n")
        p("| rate | " + " | ".join(ts) + " |")
        p("|---|" + "---|" * len(ts))
        for rate in sorted({int(r["rate"]) for r in of_kind}):
            cells = []
            for t in ts:
                rs = [r for r in of_kind if r["target"] == t and int(r["rate"]) == rate]
                cells.append(cell(rs) if rs else "–")
            p(f"| {rate} | " + " | ".join(cells) + " |")


def latency_cell(rs):
    ms = lambda k: med(num(r[k]) for r in rs) / 1000
    failed = med(num(r["failed"]) for r in rs)
    cell = f"{ms('p50_us'):.2f} / {ms('p99_us'):.2f} / {ms('max_us'):.1f}"
    return cell + (f", {fmt(failed)} failed" if failed else "")


def cost_cell(rs):
    m = lambda k: med(num(r[k]) for r in rs)
    return f"{fmt(m('cpu_us'))} + {fmt(m('db_cpu_us'))} µs, {m('switches'):.1f} sw"


if probes:
    p("\n## Latency probe (sip-probe: µs resolution, open loop, median over runs)\n")
    p("Each send and final answer timed by the monotonic clock; failed = no expected answer")
    p("within CALL_TIMEOUT_MS. p50 / p99 / max in ms.\n")
    probe_tables("###", probes, latency_cell)
    costed = [r for r in probes if r.get("cpu_us")]
    if costed:
        p("\n### CPU per request during the probe (median over runs)\n")
        p("The target's processes (Kamailio with its workers; the shim and locsvc) and the three")
        p("MariaDB servers, from /proc around each probe: target µs + databases µs, and the")
        p("target's context switches per request.\n")
        probe_tables("####", costed, cost_cell)

# Where the probes' slow answers spent their time: observations above 20 ms
# in each stage histogram of the shim and locsvc during the probe (the
# `stage_metrics` snapshots of compare.sh), beside the probe's own count.
SLOW_S = 0.02
SLOW_STAGES = (
    ("shim", "proxy_shim_stage_seconds", 'stage="total"', "shim total"),
    ("shim", "proxy_shim_stage_seconds", 'stage="wait"', "shim wait"),
    ("shim", "proxy_shim_stage_seconds", 'stage="handle"', "shim handle"),
    ("locsvc", "locsvc_rpc_duration_seconds", "", "locsvc RPC"),
    ("locsvc", "locsvc_aor_lock_wait_seconds", "", "AoR lock"),
    ("locsvc", "locsvc_member_query_seconds", "", "member part"),
    ("locsvc", "locsvc_store_queue_seconds", "", "queue"),
    ("locsvc", "locsvc_store_statement_seconds", "", "statement"),
)


def prom_lines(path):
    """The lines of one /metrics snapshot (None when it is missing)."""
    try:
        return open(path).read().splitlines()
    except OSError:
        return None


def over_slow(lines, metric, match):
    """Observations above SLOW_S in every series of `metric` whose labels
    contain `match`."""
    total = 0.0
    for l in lines:
        if not l.startswith(metric + "_bucket{") or match not in l:
            continue
        labels, value = l.rsplit(" ", 1)
        if 'le="+Inf"' in labels:
            total += float(value)
        elif f'le="{SLOW_S}"' in labels:
            total -= float(value)
    return total


def slow_row(r):
    """The probe's answers above 20 ms, then each stage's observations above
    20 ms during the probe (None without both snapshots of both sides)."""
    base = f"{out}/logs/{r['target']}-{r['run']}-{r['kind']}-{r['rate']}"
    snaps = {(side, when): prom_lines(f"{base}.{side}-{when}.prom")
             for side in ("shim", "locsvc") for when in ("before", "after")}
    if None in snaps.values():
        return None
    try:
        probe = sum(int(l.split()[2]) > SLOW_S * 1e6 for l in open(base + ".slow"))
    except OSError:
        probe = 0
    stages = [over_slow(snaps[(side, "after")], metric, match)
              - over_slow(snaps[(side, "before")], metric, match)
              for side, metric, match, _ in SLOW_STAGES]
    return [str(probe)] + [fmt(x) for x in stages]


staged = [(r, slow_row(r)) for r in probes if r["target"].startswith("shim-")]
if any(c for _, c in staged):
    p("\n### Where the slow answers' time went (shim targets)\n")
    p("Observations above 20 ms during each probe: the probe's answers (from its `.slow` list,")
    p("PROBE_SLOW_MS ≤ 20), then each stage histogram's (the shim's stages of a request; locsvc's")
    p("RPCs, AoR-lock waits, member parts of a read or write, coalescer queue waits and batch")
    p("statements: a REGISTER has one member read and two member writes). A stall counted by the")
    p("probe and the shim but in none of locsvc's stages happened between them (runtime")
    p("scheduling, the gRPC hop); one in `statement` is the database's. Per run.\n")
    p("| target | run | kind | rate | probe | " + " | ".join(n for *_, n in SLOW_STAGES) + " |")
    p("|---|---|---|---|---|" + "---|" * len(SLOW_STAGES))
    for r, c in staged:
        if c:
            p(f"| {r['target']} | {r['run']} | {r['kind']} | {r['rate']} | " + " | ".join(c) + " |")

pre = [s for s in steps if s["kind"] in ("preregister", "warmup")]
if pre:
    p("\n## Warm-up and pre-registration (not part of the ladders)\n")
    p("| target | run | kind | rate | calls | ok | failed | p99 ms |")
    p("|---|---|---|---|---|---|---|---|")
    for s in pre:
        p(f"| {s['target']} | {s['run']} | {s['kind']} | {s['rate']} | {s['calls']} | {s['ok']} | "
          f"{s['failed']} | {s['p99_ms']} |")

if rows:
    p("\n## Rows per member during the REGISTER ladder\n")
    p("Group g lives in database loc_g on server a (member 1) and on server b (member 2). Counted")
    p("one second after the last step without a failed call (every write acknowledged, so both")
    p("members must hold the same rows when writes reach both), and once the target has stopped")
    p("after the ladder's failing step (overload: what each side does with writes it could not")
    p("finish).\n")
    p("| target | run | after | a loc_1 | b loc_1 | a loc_2 | b loc_2 | both members equal |")
    p("|---|---|---|---|---|---|---|---|")
    grid = defaultdict(dict)
    for r in rows:
        grid[(r["target"], r["run"], r["after"])][(r["server"], r["database"])] = int(r["rows"])
    for target in targets:
        for run in sorted({int(r["run"]) for r in rows if r["target"] == target}):
            reg = ladders[(target, "register")].get(run, [])
            clean = [s["rate"] for s in reg if s["clean"]]
            points = [f"register-{max(clean)}" if clean else "warmup", "stopped"]
            for after in points:
                g = grid.get((target, str(run), after))
                if not g:
                    continue
                cells = [g.get(k, 0) for k in (("a", "loc_1"), ("b", "loc_1"), ("a", "loc_2"), ("b", "loc_2"))]
                eq = "yes" if cells[0] == cells[1] and cells[2] == cells[3] else "**no**"
                label = after.replace("register-", "clean step ") if after != "stopped" else "stopped"
                p(f"| {target} | {run} | {label} | " + " | ".join(map(str, cells)) + f" | {eq} |")
