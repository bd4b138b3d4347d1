#!/usr/bin/env python3
"""Helper of scripts/bench.sh (python3, standard library only).

Subcommands:
  topology QUEUE_TYPE IN OUT   write a variant of broker-topology.json with classic or quorum queues
  queues FILE                  print the queue names of a definitions file, one per line
  cpu-snap PID...              print a CPU snapshot (JSON): machine busy ticks, ticks of "our" processes
  foreign BEFORE AFTER         print the foreign CPU (cores) between two snapshots
  meta KEY=VALUE...            print the pairs as a JSON object
  metrics URL                  print warren's publish/HTTP counters (JSON) scraped from URL
  sample URL KEY SECONDS OUT   write the per-second increase of counter KEY (JSON list) to OUT
  record ...                   parse one wrk run and append it to the results file (see --help)
  render ...                   write the generated section of BENCHMARKS.md from the results file

"Our" processes in a CPU snapshot are the PIDs given (warren), every process whose name is wrk,
beam.smp, erl_child_setup, inet_gethost or epmd (the load generator and RabbitMQ), the kernel's
ksoftirqd threads (network) and the benchmark script's own process tree (--tree). The CPU time
(user + system, including reaped children's, so a cargo build's finished rustc processes count)
of every other process is "foreign": above a threshold the run was disturbed. RabbitMQ's CPU
includes work for other clients of the same broker (other vhosts, e.g. tests running at the
same time): their test processes show as foreign, and the load average is recorded too.
"""

import argparse
import json
import os
import re
import sys
import urllib.request

OURS = {"wrk", "beam.smp", "erl_child_setup", "inet_gethost", "epmd"}
QUORUM_ONLY = {
    "x-dead-letter-strategy",
    "x-delivery-limit",
    "x-quorum-initial-group-size",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
}
CLASSIC_OVERFLOW = {"drop-head", "reject-publish", "reject-publish-dlx"}
ARTICLE = {100: 1850, 500: 1650, 1000: 1200}
TARGET = 12000
START = "<!-- bench:publish:start -->"
END = "<!-- bench:publish:end -->"


# ------------------------------------------------------------------------------------------
# Topology


def cmd_topology(a):
    with open(a.src, encoding="utf-8") as f:
        defs = json.load(f)
    for q in defs.get("queues", []):
        args = q.setdefault("arguments", {})
        if a.queue_type == "classic":
            args["x-queue-type"] = "classic"
            for k in QUORUM_ONLY:
                args.pop(k, None)
            if args.get("x-overflow") not in (None, *CLASSIC_OVERFLOW):
                args.pop("x-overflow")
        else:
            args["x-queue-type"] = "quorum"
    with open(a.dst, "w", encoding="utf-8") as f:
        json.dump(defs, f, indent=2)
        f.write("\n")


def cmd_queues(a):
    with open(a.file, encoding="utf-8") as f:
        for q in json.load(f).get("queues", []):
            print(q["name"])


# ------------------------------------------------------------------------------------------
# CPU accounting


def _busy_ticks():
    with open("/proc/stat", encoding="ascii") as f:
        parts = f.readline().split()[1:]
    v = [int(x) for x in parts]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest is inside user.
    # irq/softirq time is not charged to any process (it is mostly our own loopback traffic)
    # and steal is not ours to use: count user + nice + system, as processes are counted.
    return v[0] + v[1] + v[2]


def _proc_stat(pid):
    """(comm, ppid, own ticks, reaped children's ticks, start time) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.index("(") + 1 : s.rindex(")")]
    x = s[s.rindex(")") + 2 :].split()  # x[0] is field 3 (state)
    return comm, int(x[1]), int(x[11]) + int(x[12]), int(x[13]) + int(x[14]), int(x[19])


def cmd_cpu_snap(a):
    pids = {int(p) for p in a.pids if p}
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _proc_stat(d)
            if st is not None:
                procs[int(d)] = st
    # The benchmark script's own process tree (wrk, curl, this helper...) is never foreign.
    tree = {a.tree} if a.tree else set()
    grew = True
    while grew:
        grew = False
        for pid, st in procs.items():
            if pid not in tree and st[1] in tree:
                tree.add(pid)
                grew = True
    ours, others = {}, {}
    for pid, (comm, _ppid, ticks, cticks, start) in procs.items():
        if pid == a.tree:
            # wrk runs in the foreground of the script: its time shows in the script's reaped
            # children's time once it exits (with the helpers' small share).
            ours[pid] = ["wrk", cticks]
        elif pid in pids:
            ours[pid] = ["warren", ticks]
        elif comm == "wrk":
            ours[pid] = ["wrk", ticks]
        elif comm in OURS:
            ours[pid] = ["rabbitmq", ticks]
        elif comm.startswith("ksoftirqd"):
            ours[pid] = ["kernel", ticks]
        elif pid not in tree:
            # Reaped children's time counts too: a cargo build's finished rustc processes.
            others[pid] = [comm, ticks + cticks, start]
    with open("/proc/uptime", encoding="ascii") as f:
        uptime = float(f.read().split()[0])
    json.dump({"uptime": uptime, "busy": _busy_ticks(), "ours": ours, "others": others}, sys.stdout)


def cpu_diff(before, after):
    hz = os.sysconf("SC_CLK_TCK")
    wall = max(after["uptime"] - before["uptime"], 1e-6)
    busy = (after["busy"] - before["busy"]) / hz
    groups = {}
    for p, (group, t) in after["ours"].items():
        groups[group] = groups.get(group, 0) + t - before["ours"].get(p, [group, 0])[1]
    foreign = {}
    for p, (comm, t, start) in after["others"].items():
        b = before["others"].get(p)
        d = t - (b[1] if b and b[2] == start else 0)
        if d > 0:
            foreign[comm] = foreign.get(comm, 0) + d
    top = sorted(foreign.items(), key=lambda kv: -kv[1])[:3]
    return {
        "wall_s": round(wall, 2),
        "busy_cores": round(busy / wall, 2),
        "ours_cores": round(sum(groups.values()) / hz / wall, 2),
        "foreign_cores": round(sum(foreign.values()) / hz / wall, 2),
        "foreign_top": {c: round(t / hz / wall, 2) for c, t in top if t / hz / wall >= 0.01},
        "by_process": {g: round(t / hz / wall, 2) for g, t in sorted(groups.items())},
    }


def cmd_foreign(a):
    with open(a.before, encoding="utf-8") as f:
        before = json.load(f)
    with open(a.after, encoding="utf-8") as f:
        after = json.load(f)
    print(cpu_diff(before, after)["foreign_cores"])


def cmd_meta(a):
    meta = {}
    for kv in a.pairs:
        k, _, v = kv.partition("=")
        meta[k] = v
    json.dump(meta, sys.stdout)


# ------------------------------------------------------------------------------------------
# Metrics


METRIC_RE = re.compile(r"^(messages_published_total|http_requests_total)\{([^}]*)\} (\S+)")


def scrape(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode("utf-8", "replace")
    except OSError as e:
        return {"error": str(e)}
    out = {}
    for line in text.splitlines():
        m = METRIC_RE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if m.group(1) == "messages_published_total":
            key = f"published:{labels.get('outcome')}"
        else:
            key = f"http:{labels.get('method')} {labels.get('path')} {labels.get('status')}"
        out[key] = out.get(key, 0) + float(m.group(3))
    return out


def cmd_metrics(a):
    json.dump(scrape(a.url), sys.stdout)


def cmd_sample(a):
    """Scrapes `key` every second for `seconds`: a per-second rate series shows stalls."""
    import time

    series, prev, t0 = [], None, time.monotonic()
    for i in range(int(a.seconds) + 1):
        delay = t0 + i - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        v = scrape(a.url).get(a.key)
        if v is not None and prev is not None:
            series.append(int(v - prev))
        prev = v if v is not None else prev
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(series, f)


# ------------------------------------------------------------------------------------------
# wrk output


def _dur_ms(s):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", s)
    if not m:
        return None
    mult = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}[m.group(2)]
    return float(m.group(1)) * mult


def parse_wrk(text):
    r = {"statuses": {}}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if m:
        r["requests"] = int(m.group(1))
        r["duration_s"] = _dur_ms(m.group(2) + m.group(3)) / 1000.0
    m = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    r["max_ms"] = _dur_ms(m.group(3)) if m else None
    for p in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", text, re.M)
        r[f"p{p}_ms"] = _dur_ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["socket_errors"] = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
    )
    for code, n in re.findall(r"^STATUS (\d+) (\d+)$", text, re.M):
        r["statuses"][code] = int(n)
    return r


def _loadavg():
    with open("/proc/loadavg", encoding="ascii") as f:
        return [float(x) for x in f.read().split()[:3]]


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_issues(path, offset):
    """WARN/ERROR lines of warren's log written after byte `offset`: count and a few samples."""
    counts, samples = {"WARN": 0, "ERROR": 0}, {}
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return {"counts": counts, "samples": []}
    for line in data.splitlines():
        line = ANSI.sub("", line)
        m = re.search(r"\b(WARN|ERROR)\b", line)
        if not m:
            continue
        counts[m.group(1)] += 1
        # Group by the message without ids, timestamps and numbers.
        msg = line[m.start() :]
        key = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+", "#", msg)[:160]
        samples.setdefault(key, msg[:300])
    return {"counts": counts, "samples": list(samples.values())[:5]}


def cmd_record(a):
    with open(a.wrk_out, encoding="utf-8", errors="replace") as f:
        wrk = parse_wrk(f.read())
    rec = {
        "set": a.set,
        "queue_type": a.queue_type,
        "channels": a.channels,
        "pool": a.pool,
        "route": a.route,
        "concurrency": a.concurrency,
        "attempt": a.attempt,
        "repeat": a.repeat,
        "load_start": [float(x) for x in a.load_start.split()],
        "load_end": _loadavg(),
        "wrk": wrk,
    }
    with open(a.cpu_before, encoding="utf-8") as f:
        before = json.load(f)
    with open(a.cpu_after, encoding="utf-8") as f:
        after = json.load(f)
    rec["cpu"] = cpu_diff(before, after)
    if a.metrics_before and a.metrics_after:
        with open(a.metrics_before, encoding="utf-8") as f:
            mb = json.load(f)
        with open(a.metrics_after, encoding="utf-8") as f:
            ma = json.load(f)
        rec["metrics"] = {
            k: int(v - mb.get(k, 0))
            for k, v in sorted(ma.items())
            if k != "error" and v - mb.get(k, 0)
        }
    if a.depth:
        rec["queue_depth"] = json.loads(a.depth)
    if a.series and os.path.exists(a.series):
        with open(a.series, encoding="utf-8") as f:
            series = json.load(f)
        # The first and last seconds straddle wrk's start and end.
        inner = series[1:-1] or series
        if inner:
            rec["per_second"] = {
                "min": min(inner),
                "max": max(inner),
                "zero_seconds": sum(1 for x in inner if x == 0),
                "series": series,
            }
    if a.log:
        rec["log"] = log_issues(a.log, a.log_offset)
    if a.broker:
        rec["broker"] = json.loads(a.broker)
    reasons = []
    if rec["load_start"][0] > a.max_load:
        reasons.append(f"load {rec['load_start'][0]:.2f} > {a.max_load}")
    if rec["cpu"]["foreign_cores"] > a.max_foreign:
        reasons.append(f"foreign CPU {rec['cpu']['foreign_cores']:.2f} cores > {a.max_foreign}")
    if wrk["rps"] is None:
        reasons.append("wrk output not understood")
    rec["disturbed"] = "; ".join(reasons)
    with open(a.results, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    w = wrk
    ps = rec.get("per_second", {})
    print(
        f"bench: {a.route} c={a.concurrency} {a.queue_type} ch={a.channels} pool={a.pool} "
        f"#{a.repeat + 1}: {w['rps']} req/s, p50 {w['p50_ms']} ms, p99 {w['p99_ms']} ms, "
        f"max {w['max_ms']} ms, non-2xx {w['non2xx']}, socket errors {w['socket_errors']}, "
        f"1-s rate {ps.get('min')}..{ps.get('max')}, depth {rec.get('queue_depth')}, "
        f"confirmed {rec.get('metrics', {}).get('published:confirmed')}, "
        f"load {rec['load_start'][0]}, CPU {rec['cpu']['by_process']}, "
        f"foreign {rec['cpu']['foreign_cores']} {rec['cpu'].get('foreign_top')}"
        + (f" -- DISTURBED ({rec['disturbed']})" if reasons else "")
    )
    sys.exit(3 if reasons else 0)


# ------------------------------------------------------------------------------------------
# Rendering


def _ms(v):
    if v is None:
        return "n/a"
    if v >= 1000:
        return f"{v / 1000:.2f} s"
    if v >= 10:
        return f"{v:.0f} ms"
    return f"{v:.1f} ms"


def _int(v):
    return "n/a" if v is None else f"{v:,.0f}"


def _final(records):
    """The last attempt of each run (route, concurrency, channels, pool, repeat)."""
    out = {}
    for r in records:
        out[(r["route"], r["concurrency"], r["channels"], r["pool"], r.get("repeat", 0))] = r
    return list(out.values())


def _groups(records, route):
    """Final runs of `route` grouped by (concurrency, channels, pool), in first-seen order."""
    groups = {}
    for r in _final(records):
        if r["route"] == route:
            groups.setdefault((r["concurrency"], r["channels"], r["pool"]), []).append(r)
    return groups


def _median_run(runs):
    ok = sorted(runs, key=lambda r: r["wrk"]["rps"] or 0)
    return ok[(len(ok) - 1) // 2]


def _socket_errors(runs):
    tot = {}
    for r in runs:
        for k, v in (r["wrk"].get("socket_errors") or {}).items():
            tot[k] = tot.get(k, 0) + v
    parts = [f"{k} {v:,}" for k, v in tot.items() if v]
    return ", ".join(parts) if parts else "0"


def _non2xx(runs):
    n = sum(r["wrk"].get("non2xx", 0) for r in runs)
    codes = {}
    for r in runs:
        for k, v in r["wrk"].get("statuses", {}).items():
            if not k.startswith("2"):
                codes[k] = codes.get(k, 0) + v
    total = sum(r["wrk"].get("requests", 0) for r in runs)
    s = f"{n:,}"
    if codes:
        s += " (" + ", ".join(f"{k}: {v:,}" for k, v in sorted(codes.items())) + ")"
    return s + (f" of {total:,}" if n and total else "")


def _rps_cell(runs):
    m = _median_run(runs)
    rps = [r["wrk"]["rps"] or 0 for r in runs]
    if len(runs) == 1:
        return _int(m["wrk"]["rps"])
    return f"{_int(m['wrk']['rps'])} ({_int(min(rps))}-{_int(max(rps))})"


def _disturbed_note(runs):
    d = [r for r in runs if r.get("disturbed")]
    if not d:
        return ""
    return " **(disturbed: " + "; ".join(r["disturbed"] for r in d) + ")**"


def _run_row(r):
    w, cpu = r["wrk"], r["cpu"]
    byp = cpu.get("by_process", {})
    ps = r.get("per_second") or {}
    m = r.get("metrics", {})
    d = r.get("queue_depth") or {}
    log = (r.get("log") or {}).get("counts", {})
    b = r.get("broker") or {}
    confirmed = m.get("published:confirmed")
    depth = "/".join(f"{v:,}" for v in d.values()) if d else ""
    fails = ", ".join(
        f"{k.split(':', 1)[1]} {v:,}" for k, v in m.items() if k.startswith("published:") and k != "published:confirmed"
    )
    foreign = f"{cpu['foreign_cores']:.2f}"
    if cpu.get("foreign_top") and cpu["foreign_cores"] >= 0.05:
        foreign += " (" + ", ".join(f"{k} {v:.2f}" for k, v in cpu["foreign_top"].items()) + ")"
    return (
        f"| {r['concurrency']} | {r['channels']}/{r['pool']} | {r.get('repeat', 0) + 1}"
        f"{'' if r.get('attempt', 1) == 1 else ' (attempt ' + str(r['attempt']) + ')'} | "
        f"{_int(w['rps'])} | {_ms(w['p99_ms'])} | {_ms(w.get('max_ms'))} | "
        f"{_int(ps.get('min')) if ps else ''} | {ps.get('zero_seconds', '')} | "
        f"{_int(confirmed) if confirmed is not None else ''}{' / failed: ' + fails if fails else ''} | "
        f"{depth} | {log.get('WARN', 0)}/{log.get('ERROR', 0)} | {b.get('per_connection', '')} | "
        f"{r['load_start'][0]:.2f} | "
        + ", ".join(f"{k} {v:.2f}" for k, v in byp.items() if v >= 0.005)
        + f" | {foreign}{' **disturbed**' if r.get('disturbed') else ''} |"
    )


RUNS_HEAD = [
    "| conc. | channels/pool | run | req/s | p99 | max | slowest 1 s (req/s) | seconds without a confirm | "
    "confirmed by warren | queue depth after (audit/notifications) | warren log WARN/ERROR | "
    "channels per AMQP connection | load at start | CPU cores by process | foreign CPU cores |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|",
]


def _log_samples(records):
    seen = {}
    for r in records:
        for smp in (r.get("log") or {}).get("samples", []):
            key = re.sub(r"\d+", "#", smp)[:120]
            seen.setdefault(key, smp)
    return list(seen.values())[:5]


def _meta_lines(meta):
    return [
        f"- Date: {meta['date']}; git commit: `{meta['commit']}`",
        f"- Machine: {meta['nproc']} CPUs ({meta['cpu_model']}), {meta['memory']} RAM, "
        f"{meta['kernel']}; wrk, warren and RabbitMQ share these CPUs",
        f"- RabbitMQ {meta['rabbitmq']} (Erlang {meta['erlang']}); {meta['rustc']}; {meta['wrk']}",
        f"- Command: `{meta['command']}`",
        f"- wrk: `{meta['wrk_cmd']}`: {meta['seconds']} s per run, {meta.get('repeat', '1')} runs per "
        f"row (in rounds over the concurrencies; the table shows the median run, req/s range in "
        f"brackets), {meta['warmup']} s warm-up after each start of warren, queues purged "
        f"before each run, body {meta['body_bytes']} bytes of JSON",
        f"- warren: `warren serve` (release), vhost `{meta['vhost']}`, SQLite in a temp dir, "
        f"settings {meta['settings']}",
        f"- Load average when the set started: {meta['loadavg']}",
    ]


def _section_queue_type(qt, records, meta):
    title = "Quorum queues (the default topology)" if qt == "quorum" else (
        "Classic queues (topology variant: x-queue-type classic; x-dead-letter-strategy and "
        "x-delivery-limit removed; x-overflow reject-publish kept)"
    )
    out = [f"### {title}", "", *_meta_lines(meta), ""]
    out += [
        "| concurrency | req/s | p50 | p90 | p99 | non-2xx | socket errors | article (event-driven) | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (c, _ch, _pool), runs in _groups(records, "publish").items():
        m = _median_run(runs)
        w = m["wrk"]
        out.append(
            f"| {c} | {_rps_cell(runs)} | {_ms(w['p50_ms'])} | {_ms(w['p90_ms'])} | "
            f"{_ms(w['p99_ms'])} | {_non2xx(runs)} | {_socket_errors(runs)} | "
            f"{_int(ARTICLE.get(c))} | {TARGET:,} |"
        )
    out.append("")
    for (c, _ch, _pool), runs in _groups(records, "healthz").items():
        m = _median_run(runs)
        w = m["wrk"]
        out.append(
            f"HTTP ceiling (reference, same run and process): `GET /healthz` at {c} connections: "
            f"{_rps_cell(runs)} req/s, p50 {_ms(w['p50_ms'])}, p90 {_ms(w['p90_ms'])}, "
            f"p99 {_ms(w['p99_ms'])}, non-2xx {_non2xx(runs)}; CPU: "
            + ", ".join(f"{k} {v:.2f}" for k, v in m["cpu"].get("by_process", {}).items() if v >= 0.005)
            + f" cores; load at start {m['load_start'][0]:.2f}.{_disturbed_note(runs)}"
        )
    pub = [r for r in _final(records) if r["route"] == "publish"]
    out += ["", "<details><summary>Every run</summary>", "", *RUNS_HEAD]
    out += [_run_row(r) for r in pub]
    samples = _log_samples(pub)
    if samples:
        out += ["", "warren log lines at WARN/ERROR during the runs (one of each kind):", ""]
        out += [f"- `{x.replace('`', chr(39))}`" for x in samples]
    out += ["", "</details>"]
    return out


def _section_tuning(records, meta):
    out = [
        "### Publish channels and pool size",
        "",
        *_meta_lines(meta),
        "",
        "| publish_channels | pool_size | concurrency | req/s | p50 | p90 | p99 | non-2xx | channels per AMQP connection |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (c, ch, pool), runs in _groups(records, "publish").items():
        m = _median_run(runs)
        w = m["wrk"]
        per = ", ".join(sorted({(r.get("broker") or {}).get("per_connection", "?") for r in runs}))
        out.append(
            f"| {ch} | {pool} | {c} | {_rps_cell(runs)} | {_ms(w['p50_ms'])} | {_ms(w['p90_ms'])} | "
            f"{_ms(w['p99_ms'])} | {_non2xx(runs)} | {per} |"
        )
    out += ["", "<details><summary>Every run</summary>", "", *RUNS_HEAD]
    out += [_run_row(r) for r in _final(records) if r["route"] == "publish"]
    out += ["", "</details>"]
    return out


def _queue_type_paragraph(data):
    def medians(s):
        recs = data.get(s, {}).get("records", [])
        return {c: _median_run(runs) for (c, _ch, _p), runs in _groups(recs, "publish").items()}

    q, c = medians("quorum"), medians("classic")
    common = [n for n in q if n in c]
    head = ["### Queue type", ""]
    if not common:
        return head + [
            "Run `scripts/bench.sh --queue-type both` to compare quorum and classic queues."
        ]
    parts, ratios = [], []
    for n in common:
        qr, cr = q[n]["wrk"]["rps"], c[n]["wrk"]["rps"]
        ratios.append(qr / cr)
        parts.append(
            f"{n} connections: quorum {_int(qr)} vs classic {_int(cr)} req/s "
            f"({(qr / cr - 1) * 100:+.0f}% for quorum), p99 {_ms(q[n]['wrk']['p99_ms'])} vs "
            f"{_ms(c[n]['wrk']['p99_ms'])}"
        )
    mean = sum(ratios) / len(ratios)
    if abs(mean - 1) < 0.05:
        verdict = "Quorum and classic queues publish at about the same rate here (within 5% on average)"
    elif mean > 1:
        verdict = f"Quorum queues are faster here: {(mean - 1) * 100:.0f}% more req/s than classic on average"
    else:
        verdict = f"Classic queues are faster here: {(1 / mean - 1) * 100:.0f}% more req/s than quorum on average"
    return head + [
        f"{verdict} (medians; {'; '.join(parts)}). Each `user.registered` event lands in 2 "
        "queues (`warren.audit` through `#`, `warren.notifications` through `user.*`), so the "
        "broker stores two persistent messages per request, and confirms the publish only once "
        "both are safely written. Quorum queues append to one write-ahead log shared by all "
        "queues and fsync it in batches; classic queues go through the per-vhost message store "
        "and each queue's index. The numbers compare the two queue types under this benchmark "
        "only; the classic variant also drops warren's at-least-once dead-lettering and the "
        "delivery limit."
    ]


def cmd_render(a):
    with open(a.meta, encoding="utf-8") as f:
        meta = json.load(f)
    records = []
    if os.path.exists(a.results):
        with open(a.results, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    text = ""
    if os.path.exists(a.file):
        with open(a.file, encoding="utf-8") as f:
            text = f.read()
    # Previous data of each set, kept in the section as JSON comments.
    data = {}
    if START in text and END in text:
        old = text[text.index(START) : text.index(END)]
        for m in re.finditer(r"<!-- bench:data (\w+) (.*?) -->", old):
            data[m.group(1)] = json.loads(m.group(2).replace("-\\u002d", "--"))
    for s in sorted({r["set"] for r in records}):
        data[s] = {"meta": meta, "records": [r for r in records if r["set"] == s]}

    out = [
        START,
        "## Publish throughput: `POST /v1/events/user.registered` (generated)",
        "",
        "_Generated by `scripts/bench.sh`; everything between the `bench:publish` markers is "
        "rewritten when the set is re-run (write notes outside them). Each run records the load "
        "average at its start and the CPU used by processes other than wrk, warren and RabbitMQ "
        "(\"foreign\", e.g. a compile); a run that started with load > 3 or saw more than 0.3 "
        "foreign cores is repeated once the machine is quiet, and the last attempt is kept "
        "(\"attempt\" in the run list)._",
        "",
        "Article's event-driven figures: 1,850 / 1,650 / 1,200 req/s at 100 / 500 / 1,000 "
        f"connections. Target: {TARGET:,} req/s at each.",
        "",
    ]
    out += _queue_type_paragraph(data) + [""]
    for s in ("quorum", "classic", "tuning"):
        if s not in data:
            continue
        d = data[s]
        if s == "tuning":
            out += _section_tuning(d["records"], d["meta"])
        else:
            out += _section_queue_type(s, d["records"], d["meta"])
        blob = json.dumps(d, separators=(",", ":")).replace("--", "-\\u002d")
        out += ["", f"<!-- bench:data {s} {blob} -->", ""]
    out.append(END)
    section = "\n".join(out)
    if START in text and END in text:
        new = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        new = (text.rstrip() + "\n\n" if text.strip() else "# Benchmarks\n\n") + section + "\n"
    with open(a.file, "w", encoding="utf-8") as f:
        f.write(new)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("topology")
    t.add_argument("queue_type", choices=["classic", "quorum"])
    t.add_argument("src")
    t.add_argument("dst")
    t.set_defaults(fn=cmd_topology)
    q = sub.add_parser("queues")
    q.add_argument("file")
    q.set_defaults(fn=cmd_queues)
    c = sub.add_parser("cpu-snap")
    c.add_argument("--tree", type=int, help="PID whose process tree is never foreign (the benchmark script)")
    c.add_argument("pids", nargs="*", help="warren's PID")
    c.set_defaults(fn=cmd_cpu_snap)
    fo = sub.add_parser("foreign")
    fo.add_argument("before")
    fo.add_argument("after")
    fo.set_defaults(fn=cmd_foreign)
    me = sub.add_parser("meta")
    me.add_argument("pairs", nargs="*")
    me.set_defaults(fn=cmd_meta)
    sa = sub.add_parser("sample")
    sa.add_argument("url")
    sa.add_argument("key")
    sa.add_argument("seconds", type=float)
    sa.add_argument("out")
    sa.set_defaults(fn=cmd_sample)
    m = sub.add_parser("metrics")
    m.add_argument("url")
    m.set_defaults(fn=cmd_metrics)
    r = sub.add_parser("record")
    for name in ("set", "queue-type", "route", "wrk-out", "cpu-before", "cpu-after", "load-start", "results"):
        r.add_argument(f"--{name}", required=True)
    r.add_argument("--concurrency", type=int, required=True)
    r.add_argument("--channels", type=int, required=True)
    r.add_argument("--pool", type=int, required=True)
    r.add_argument("--attempt", type=int, default=1)
    r.add_argument("--repeat", type=int, default=0, help="index of the variant, to keep repeats apart")
    r.add_argument("--metrics-before")
    r.add_argument("--metrics-after")
    r.add_argument("--depth")
    r.add_argument("--series", help="per-second series written by `sample`")
    r.add_argument("--broker")
    r.add_argument("--log")
    r.add_argument("--log-offset", type=int, default=0)
    r.add_argument("--max-load", type=float, default=3.0)
    r.add_argument("--max-foreign", type=float, default=0.3)
    r.set_defaults(fn=cmd_record)
    w = sub.add_parser("render")
    w.add_argument("--results", required=True)
    w.add_argument("--meta", required=True)
    w.add_argument("--file", required=True)
    w.set_defaults(fn=cmd_render)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
