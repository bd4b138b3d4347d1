#!/usr/bin/env python3
"""Helper of scripts/bench.sh (python3, standard library only).

Subcommands:
  topology QUEUE_TYPE IN OUT   write a variant of broker-topology.json with classic or quorum queues
  queues FILE                  print the queue names of a definitions file, one per line
  cpu-snap PID...              print a CPU snapshot (JSON): machine busy ticks, ticks of "our" processes
  foreign BEFORE AFTER         print the foreign CPU (cores) between two snapshots
  meta KEY=VALUE...            print the pairs as a JSON object
  metrics URL                  print warren's publish/HTTP counters (JSON) scraped from URL
  record ...                   parse one wrk run and append it to the results file (see --help)
  render ...                   write the generated section of BENCHMARKS.md from the results file

"Our" processes in a CPU snapshot are the PIDs given (warren) plus every process whose name is
wrk, beam.smp, erl_child_setup, inet_gethost or epmd (the load generator and RabbitMQ). Whatever
else used CPU during a run (a cargo build, tests) is "foreign" CPU: the run was disturbed.
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
    return sum(v[:8]) - v[3] - v[4]


def _proc_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            s = f.read()
    except OSError:
        return None, None
    comm = s[s.index("(") + 1 : s.rindex(")")]
    fields = s[s.rindex(")") + 2 :].split()
    return comm, int(fields[11]) + int(fields[12])  # utime + stime


def cmd_cpu_snap(a):
    pids = {int(p) for p in a.pids if p}
    ours = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        comm, ticks = _proc_ticks(d)
        if comm is not None and (int(d) in pids or comm in OURS):
            ours[d] = ticks
    with open("/proc/uptime", encoding="ascii") as f:
        uptime = float(f.read().split()[0])
    json.dump({"uptime": uptime, "busy": _busy_ticks(), "ours": ours}, sys.stdout)


def cpu_diff(before, after):
    hz = os.sysconf("SC_CLK_TCK")
    wall = max(after["uptime"] - before["uptime"], 1e-6)
    busy = (after["busy"] - before["busy"]) / hz
    ours = sum(t - before["ours"].get(p, 0) for p, t in after["ours"].items()) / hz
    return {
        "wall_s": round(wall, 2),
        "busy_cores": round(busy / wall, 2),
        "ours_cores": round(ours / wall, 2),
        "foreign_cores": round(max(busy - ours, 0.0) / wall, 2),
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
    print(
        f"bench: {a.route} c={a.concurrency} {a.queue_type} ch={a.channels} pool={a.pool}: "
        f"{w['rps']} req/s, p50 {w['p50_ms']} ms, p99 {w['p99_ms']} ms, non-2xx {w['non2xx']}, "
        f"socket errors {w['socket_errors']}, load {rec['load_start'][0]}, "
        f"foreign CPU {rec['cpu']['foreign_cores']} cores"
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
    """The last attempt of each (route, concurrency, channels, pool) key, in first-seen order."""
    out = {}
    for r in records:
        out[(r["route"], r["concurrency"], r["channels"], r["pool"], r.get("repeat", 0))] = r
    return list(out.values())


def _errors(r):
    se = r["wrk"].get("socket_errors") or {}
    parts = [f"{k} {v}" for k, v in se.items() if v]
    return ", ".join(parts) if parts else "0"


def _non2xx(r):
    n = r["wrk"].get("non2xx", 0)
    codes = {k: v for k, v in r["wrk"].get("statuses", {}).items() if not k.startswith("2")}
    if codes:
        return f"{n:,} (" + ", ".join(f"{k}: {v:,}" for k, v in sorted(codes.items())) + ")"
    return f"{n:,}"


def _run_notes(r):
    cpu = r["cpu"]
    notes = [
        f"load at start {r['load_start'][0]:.2f}",
        f"CPU busy {cpu['busy_cores']:.2f} cores (foreign {cpu['foreign_cores']:.2f})",
    ]
    if r.get("attempt", 1) > 1:
        notes.append(f"attempt {r['attempt']}")
    if r.get("disturbed"):
        notes.append(f"**disturbed: {r['disturbed']}**")
    return "; ".join(notes)


def _table(records, meta):
    lines = [
        "| concurrency | req/s | p50 | p90 | p99 | non-2xx | socket errors | article (event-driven) | target | run conditions |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in records:
        w = r["wrk"]
        c = r["concurrency"]
        lines.append(
            f"| {c} | {_int(w['rps'])} | {_ms(w['p50_ms'])} | {_ms(w['p90_ms'])} | "
            f"{_ms(w['p99_ms'])} | {_non2xx(r)} | {_errors(r)} | {_int(ARTICLE.get(c))} | "
            f"{TARGET:,} | {_run_notes(r)} |"
        )
    return lines


def _checks(records):
    lines = []
    for r in records:
        m = r.get("metrics", {})
        d = r.get("queue_depth") or {}
        log = r.get("log", {})
        bits = []
        if m:
            bits.append(
                "warren counters: "
                + ", ".join(f"{k.replace('published:', 'publish ')}={v:,}" for k, v in m.items())
            )
        if d:
            bits.append("queue depth after run: " + ", ".join(f"{k}={v:,}" for k, v in d.items()))
        if log:
            c = log.get("counts", {})
            bits.append(f"warren log: {c.get('WARN', 0)} WARN, {c.get('ERROR', 0)} ERROR")
        b = r.get("broker")
        if b:
            bits.append(
                f"AMQP: {b.get('connections')} connection(s), {b.get('channels')} channel(s)"
            )
        lines.append(f"- c={r['concurrency']}: " + "; ".join(bits))
        for s in log.get("samples", [])[:3]:
            lines.append(f"  - `{s.replace('`', chr(39))}`")
    return lines


def _meta_lines(meta):
    return [
        f"- Date: {meta['date']}; git commit: `{meta['commit']}`",
        f"- Machine: {meta['nproc']} CPUs ({meta['cpu_model']}), {meta['memory']} RAM, "
        f"{meta['kernel']}; load generator (wrk), warren and RabbitMQ share these CPUs",
        f"- RabbitMQ {meta['rabbitmq']} (Erlang {meta['erlang']}); {meta['rustc']}; {meta['wrk']}",
        f"- Command: `{meta['command']}`",
        f"- wrk: `{meta['wrk_cmd']}` ({meta['seconds']} s per run, {meta['warmup']} s warm-up "
        f"before the first run; queues purged before each run; body {meta['body_bytes']} bytes)",
        f"- warren: `warren serve` (release), vhost `{meta['vhost']}`, SQLite in a temp dir, "
        f"settings {meta['settings']}",
    ]


def _section_queue_type(qt, records, meta):
    pub = [r for r in _final(records) if r["route"] == "publish"]
    ceil = [r for r in _final(records) if r["route"] == "healthz"]
    title = "Quorum queues (the default topology)" if qt == "quorum" else (
        "Classic queues (topology variant: x-queue-type classic, no x-dead-letter-strategy, "
        "no x-delivery-limit)"
    )
    out = [f"### {title}", "", *_meta_lines(meta), f"- Load average at start of this set: {meta['loadavg']}", ""]
    out += _table(pub, meta)
    out.append("")
    for r in ceil:
        w = r["wrk"]
        out.append(
            f"HTTP ceiling (reference, same run): `GET /healthz` at {r['concurrency']} connections: "
            f"{_int(w['rps'])} req/s, p50 {_ms(w['p50_ms'])}, p90 {_ms(w['p90_ms'])}, "
            f"p99 {_ms(w['p99_ms'])}, non-2xx {_non2xx(r)}; {_run_notes(r)}."
        )
    out += ["", "Checks per run:", "", *_checks(pub)]
    return out


def _section_tuning(records, meta):
    out = [
        "### Publish channels and pool size",
        "",
        *_meta_lines(meta),
        "",
        "| publish_channels | pool_size | concurrency | req/s | p50 | p90 | p99 | non-2xx | AMQP connections / channels | run conditions |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in _final(records):
        if r["route"] != "publish":
            continue
        w = r["wrk"]
        b = r.get("broker") or {}
        out.append(
            f"| {r['channels']} | {r['pool']} | {r['concurrency']} | {_int(w['rps'])} | "
            f"{_ms(w['p50_ms'])} | {_ms(w['p90_ms'])} | {_ms(w['p99_ms'])} | {_non2xx(r)} | "
            f"{b.get('connections', '?')} / {b.get('channels', '?')} | {_run_notes(r)} |"
        )
    out += [
        "",
        "The defaults (8 channels, pool 2) run first and again last: the spread between those two "
        "rows is the run-to-run noise on this machine.",
    ]
    return out


def _queue_type_paragraph(data):
    q = {r["concurrency"]: r for r in _final(data.get("quorum", {}).get("records", [])) if r["route"] == "publish"}
    c = {r["concurrency"]: r for r in _final(data.get("classic", {}).get("records", [])) if r["route"] == "publish"}
    common = sorted(set(q) & set(c))
    head = [
        "### Queue type",
        "",
    ]
    if not common:
        return head + [
            "Run `scripts/bench.sh --queue-type classic` and `--queue-type quorum` (or "
            "`--queue-type both`) to compare queue types."
        ]
    parts = []
    ratios = []
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
        verdict = "Quorum and classic queues publish at about the same rate here (within 5%)"
    elif mean > 1:
        verdict = f"Quorum queues are faster here: on average {(mean - 1) * 100:.0f}% more req/s than classic"
    else:
        verdict = f"Classic queues are faster here: on average {(1 / mean - 1) * 100:.0f}% more req/s than quorum"
    return head + [
        f"{verdict} ({'; '.join(parts)}). Each `user.registered` event lands in 2 queues "
        "(`warren.audit` through `#` and `warren.notifications` through `user.*`), so the broker "
        "enqueues (and, being persistent, writes) twice the req/s in messages before it confirms. "
        "Quorum queues fsync their write-ahead log in batches shared by all queues; classic "
        "queues confirm persistent messages after their own per-queue store flush. Both sets "
        "were measured with the same binary, settings and wrk command; see each set's date and "
        "load."
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
        "rewritten on each run (write notes outside them). Each run records the load average "
        "and the CPU used by processes other than wrk, warren and RabbitMQ (\"foreign\"); a run "
        "that started with load > 3 or saw a foreign process (e.g. a compile) use more than "
        "0.3 cores is re-run later, and the last attempt is shown._",
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
    c.add_argument("pids", nargs="*")
    c.set_defaults(fn=cmd_cpu_snap)
    fo = sub.add_parser("foreign")
    fo.add_argument("before")
    fo.add_argument("after")
    fo.set_defaults(fn=cmd_foreign)
    me = sub.add_parser("meta")
    me.add_argument("pairs", nargs="*")
    me.set_defaults(fn=cmd_meta)
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
