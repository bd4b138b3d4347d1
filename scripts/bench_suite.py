#!/usr/bin/env python3
"""The benchmark suite's driver (run it through scripts/bench-suite.sh, which starts the
servers and builds warren first).

Measures, in one run on one machine:
  1. the article's table: synchronous mode (`?mode=sync`: notification row, welcome e-mail over
     SMTP, audit row, all inside the request) against event-driven mode (publish with a confirm
     and answer) at each concurrency, with wrk;
  2. the ceilings beside it: a bare warp+lapin publish server (`warren-bench bare-server`) on the
     same exchange, bindings and queues, and a raw lapin publisher and consumer
     (`warren-bench raw`); warren's job draining (`warren-bench jobs --handler noop`) against
     the raw consumer;
  3. the peer: Celery 5 (pip, in a virtualenv) on the same broker: publish rate, drain rate of
     a no-op task, and the delay of tasks retried once with a 5 s countdown under load; the same
     for warren's broker-side retries (`warren-bench retry-delay`);
  4. sagas per second end to end (`warren-bench sagas`) with the built-in Rust participants
     (the order saga) and with HTTP participants (`--participants http`: a file-defined saga of
     the same shape whose commands go to HTTP subscriptions answered by in-process hyper
     participants, issue 19 point 7), alternating in the same database, and the ratio HTTP /
     Rust (the Rust participants are the ceiling); job throughput with 1 and 2 worker processes
     (`warren-bench scale`), and the RSS of `warren serve` idle and under the largest load;
  5. HTTP subscriptions (`warren-bench subscriptions`, issue 18 point 9): deliveries per second
     to a local receiver answering 204 at concurrency 1, 16 and 64, against a bare lapin
     consumer POSTing with one pooled reqwest client (the ceiling, same run), and the delivery
     latency p50/p99 (publish to receiver) at a steady rate;
  6. what the message format costs the broker (`warren-bench header-cost`, issue 20 point 3):
     RabbitMQ's CPU per message for the bare body (the ceiling), warren's envelope, and the
     envelope with the CloudEvents `ce-*` headers.

Writes the results between <!-- bench:suite:start --> and <!-- bench:suite:end --> in
BENCHMARKS.md, the chart docs/bench/suite.svg and the raw figures docs/bench/suite.json; step 5
writes its own block, between <!-- bench:subscriptions:start --> and
<!-- bench:subscriptions:end -->, with its raw figures in a `bench:data subscriptions` comment;
step 6 likewise between the `bench:headers` markers.
A block is rewritten only when its steps ran (`--only subscriptions` leaves the suite's block,
suite.svg and suite.json alone). When `--only` runs some of the suite's own steps
(`--only sagas_and_scale`), the figures of the others are carried over from the last
docs/bench/suite.json, and the block names which run each step's figures come from.
With --smoke everything is tiny (seconds), nothing in the repo is written, Celery is skipped
unless --celery is given, and the run fails when a figure is not sane (zero throughput, an
error answer, a message lost); absolute speeds are never asserted.
"""

import argparse
import base64
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_report import parse_wrk  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTICLE = {  # the article's load table (SUMMARY.md part 9), req/s
    "event": {100: 1850, 500: 1650, 1000: 1200},
    "sync": {100: 1250, 500: 850, 1000: 420},
}
CELERY_VERSION = "celery==5.5.3"

LUA = r"""
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
local counter = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function request()
  counter = counter + 1
  local body = string.format('{"user_id": "u-%d", "email": "user%d@example.com", "name": "Ada Lovelace", "plan": "pro", "source": "bench", "pad": "%s"}', counter, counter, string.rep("x", 60))
  return wrk.format(nil, nil, nil, body)
end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do total[code] = (total[code] or 0) + n end
  end
  for code, n in pairs(total) do io.write(string.format("STATUS %d %d\n", code, n)) end
end
"""


def log(*a):
    print("[suite]", *a, file=sys.stderr, flush=True)


class Mgmt:
    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        self.base = f"{u.scheme}://{u.hostname}:{u.port or 15672}/api"
        cred = f"{urllib.parse.unquote(u.username or 'guest')}:{urllib.parse.unquote(u.password or 'guest')}"
        self.auth = "Basic " + base64.b64encode(cred.encode()).decode()

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("authorization", self.auth)
        req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            if e.code == 404 and method in ("DELETE", "GET"):
                return None
            raise

    def fresh_vhost(self, vhost, user):
        q = urllib.parse.quote(vhost, safe="")
        self.call("DELETE", f"/vhosts/{q}")
        self.call("PUT", f"/vhosts/{q}", {})
        self.call("PUT", f"/permissions/{q}/{user}", {"configure": ".*", "write": ".*", "read": ".*"})

    def delete_vhost(self, vhost):
        self.call("DELETE", f"/vhosts/{urllib.parse.quote(vhost, safe='')}")

    def queues(self, vhost):
        return self.call("GET", f"/queues/{urllib.parse.quote(vhost, safe='')}") or []

    def depth(self, vhost, queue):
        q = self.call("GET", f"/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue, safe='')}")
        if not q:
            return None
        return (q.get("messages_ready") or 0) + (q.get("messages_unacknowledged") or 0), q

    def purge_all(self, vhost):
        v = urllib.parse.quote(vhost, safe="")
        for q in self.queues(vhost):
            self.call("DELETE", f"/queues/{v}/{urllib.parse.quote(q['name'], safe='')}/contents")


def with_vhost(amqp_url, vhost):
    u = urllib.parse.urlparse(amqp_url)
    return urllib.parse.urlunparse(u._replace(path="/" + urllib.parse.quote(vhost, safe="")))


def wait_http(url, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout} s")


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def bench_lines(text):
    out = []
    for line in text.splitlines():
        if line.startswith("BENCH "):
            out.append(json.loads(line[6:]))
    return out


class Suite:
    def __init__(self, a):
        self.a = a
        self.smoke = a.smoke
        self.bin = a.bin
        self.bench_bin = a.bench_bin
        self.amqp = a.amqp_url
        self.user = urllib.parse.unquote(urllib.parse.urlparse(self.amqp).username or "guest")
        self.mgmt = Mgmt(a.management_url)
        self.pg = a.database_url.rstrip("/")
        self.work = tempfile.mkdtemp(prefix="warren-suite-")
        self.procs = []
        self.results = {"meta": {}, "http": [], "raw": [], "jobs": [], "retry": [], "celery": {},
                        "sagas": [], "scale": [], "rss": {}, "subscriptions": [], "headers": [], "problems": []}
        if self.smoke:
            self.conc = [10, 50]
            self.seconds = 2
        else:
            self.conc = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "100 500 1000").split()]
            self.seconds = a.seconds
        with open(os.path.join(self.work, "post.lua"), "w", encoding="utf-8") as f:
            f.write(LUA)

    # -- processes -------------------------------------------------------------------------
    def env(self, **extra):
        e = dict(os.environ)
        e.update({"WARREN_LOG__FILTER": "warn", "RUST_BACKTRACE": "1"})
        e.update({k: str(v) for k, v in extra.items()})
        return e

    def start(self, name, args, env, port=None, bin=None):
        if port is not None:
            import socket
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    raise RuntimeError(f"port {port} is taken: stop what listens there ({name} needs it)")
        out = open(os.path.join(self.work, f"{name}.log"), "w", encoding="utf-8")
        p = subprocess.Popen([bin or self.bin, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((name, p))
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def cleanup(self):
        for _, p in self.procs:
            self.stop(p)

    def run_bench(self, args, env, timeout=1800):
        log("warren-bench", " ".join(args))
        r = subprocess.run([self.bench_bin, *args], env=env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"warren-bench {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        print(r.stdout.strip(), file=sys.stderr)
        return bench_lines(r.stdout)

    def depth(self, amqp_url, queue):
        """The queue's exact message count (a passive declare through `warren-bench depth`;
        the management API's and rabbitmqctl's counts of a quorum queue trail by seconds)."""
        r = subprocess.run([self.bench_bin, "depth", queue], env=self.env(WARREN_AMQP__URL=amqp_url),
                           capture_output=True, text=True, timeout=60, check=True)
        for line in r.stdout.splitlines():
            name, _, count = line.rpartition(" ")
            if name == queue:
                return int(count)
        return None

    def psql(self, sql):
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", f"{self.pg}/postgres", "-c", sql], check=True,
                       capture_output=True)

    def fresh_db(self, name):
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.psql(f"CREATE DATABASE {name}")
        return f"{self.pg}/{name}"

    # -- wrk -------------------------------------------------------------------------------
    def wrk(self, url, conns, seconds, sample_pid=None):
        cmd = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "10s",
               "-s", os.path.join(self.work, "post.lua"), url]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak = None
        while p.poll() is None:
            if sample_pid:
                m = rss_mb(sample_pid)
                if m is not None:
                    peak = max(peak or 0, m)
            time.sleep(0.25)
        out = p.stdout.read()
        r = parse_wrk(out)
        r["ok"] = sum(n for c, n in r["statuses"].items() if c.startswith("2"))
        r["rss_peak_mb"] = peak
        if r["rps"] is None:
            raise RuntimeError(f"wrk failed: {out}")
        return r

    # -- 1 + 2: HTTP --------------------------------------------------------------------------
    def http(self):
        vhost = "warren-suite-http"
        self.mgmt.fresh_vhost(vhost, self.user)
        url = with_vhost(self.amqp, vhost)
        db = self.fresh_db("warren_suite_http")
        smtp_port, http_port, bare_port = 2526, 8089, 8090
        sink = self.start("smtp-sink", ["smtp-sink", "--addr", f"127.0.0.1:{smtp_port}"], self.env(),
                          port=smtp_port, bin=self.bench_bin)
        serve = self.start("serve", ["serve"], self.env(
            WARREN_AMQP__URL=url, WARREN_DATABASE__URL=db,
            WARREN_HTTP__ADDR=f"127.0.0.1:{http_port}",
            WARREN_EMAIL__SMTP_URL=f"smtp://127.0.0.1:{smtp_port}",
            WARREN_HTTP__SLOW_REQUEST_MS=60000), port=http_port)
        wait_http(f"http://127.0.0.1:{http_port}/readyz", 120)
        bare = self.start("bare", ["bare-server", "--addr", f"127.0.0.1:{bare_port}"],
                          self.env(WARREN_AMQP__URL=url), port=bare_port, bin=self.bench_bin)
        wait_http(f"http://127.0.0.1:{bare_port}/hello", 60)
        time.sleep(1 if self.smoke else 3)
        self.results["rss"]["serve_idle_mb"] = rss_mb(serve.pid)
        # user.registered lands in two queues (warren.audit through `#`, warren.notifications
        # through `user.*`); bench.single only in warren.audit: the same runs with half the
        # broker's work show what the second queue costs.
        targets = [
            ("event", f"http://127.0.0.1:{http_port}/v1/events/user.registered", serve.pid),
            ("bare", f"http://127.0.0.1:{bare_port}/publish/user.registered", None),
            ("sync", f"http://127.0.0.1:{http_port}/v1/events/user.registered?mode=sync", serve.pid),
        ]
        if not self.smoke:
            targets += [
                ("event-1q", f"http://127.0.0.1:{http_port}/v1/events/bench.single", serve.pid),
                ("bare-1q", f"http://127.0.0.1:{bare_port}/publish/bench.single", None),
            ]
        for c in self.conc:
            for mode, target, pid in targets:
                self.mgmt.purge_all(vhost)
                log(f"wrk {mode} c={c}")
                r = self.wrk(target, c, self.seconds, sample_pid=pid)
                r.update({"mode": mode, "concurrency": c})
                if mode != "sync":
                    r["queued"] = self.depth(url, "warren.audit")
                self.results["http"].append(r)
                log(f"  {r['rps']:.0f} req/s, p99 {r['p99_ms']} ms, ok {r['ok']}, queued {r.get('queued')}")
                if mode == "event" and c == max(self.conc):
                    self.results["rss"]["serve_load_mb"] = r["rss_peak_mb"]
                    self.results["rss"]["serve_load_conns"] = c
        self.stop(bare)
        self.stop(serve)
        self.stop(sink)
        with open(os.path.join(self.work, "smtp-sink.log"), encoding="utf-8") as f:
            mails = [x for x in bench_lines(f.read()) if x.get("bench") == "smtp_sink"]
        self.results["sync_mails"] = mails[0]["mails"] if mails else None
        self.mgmt.delete_vhost(vhost)

    # -- 2: raw and jobs ------------------------------------------------------------------------
    def raw_and_jobs(self):
        n = 2000 if self.smoke else self.a.messages
        env = self.env(WARREN_AMQP__URL=self.amqp)
        for qt in ["quorum"] if self.smoke else ["quorum", "classic"]:
            self.results["raw"] += self.run_bench(["raw", "--messages", str(n), "--queue-type", qt], env)
        db = self.fresh_db("warren_suite_jobs")
        self.results["jobs"] += self.run_bench(
            ["jobs", "--handler", "noop", "--messages", str(n)],
            self.env(WARREN_AMQP__URL=self.amqp, WARREN_DATABASE__URL=db))
        if not self.smoke:
            sqlite = os.path.join(self.work, "jobs.db")
            self.results["jobs"] += self.run_bench(
                ["jobs", "--handler", "noop", "--messages", str(n)],
                self.env(WARREN_AMQP__URL=self.amqp, WARREN_DATABASE__URL=f"sqlite://{sqlite}?mode=rwc"))

    # -- 3: retries, Celery -----------------------------------------------------------------
    def retry(self):
        jobs = 200 if self.smoke else self.a.retry_jobs
        delay = 1000 if self.smoke else 5000
        db = self.fresh_db("warren_suite_retry")
        self.results["retry"] += self.run_bench(
            ["retry-delay", "--jobs", str(jobs), "--delay-ms", str(delay)],
            self.env(WARREN_AMQP__URL=self.amqp, WARREN_DATABASE__URL=db))

    def celery(self):
        venv = self.a.venv
        py = os.path.join(venv, "bin", "python")
        if not os.path.exists(py):
            log("creating the Celery virtualenv in", venv)
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        if subprocess.run([py, "-c", "import celery"], capture_output=True).returncode != 0:
            subprocess.run([py, "-m", "pip", "install", "-q", CELERY_VERSION], check=True)
        version = subprocess.run([py, "-c", "import celery; print(celery.__version__)"], check=True,
                                 capture_output=True, text=True).stdout.strip()
        vhost = "warren-suite-celery"
        self.mgmt.fresh_vhost(vhost, self.user)
        broker = with_vhost(self.amqp, vhost)
        n = 500 if self.smoke else self.a.celery_tasks
        retry_n = 100 if self.smoke else self.a.retry_jobs
        delay = 1 if self.smoke else 5
        tasks_dir = os.path.join(self.work, "celery")
        os.makedirs(tasks_dir, exist_ok=True)
        delays_file = os.path.join(tasks_dir, "delays.txt")
        done_file = os.path.join(tasks_dir, "done.txt")
        with open(os.path.join(tasks_dir, "benchtasks.py"), "w", encoding="utf-8") as f:
            f.write(f'''import os, time
from celery import Celery
app = Celery("benchtasks", broker={broker!r})
app.conf.update(task_ignore_result=True, worker_prefetch_multiplier=4, broker_connection_retry_on_startup=True)
DELAYS = {delays_file!r}

DONE = {done_file!r}

@app.task
def noop(i):
    # The task's only work: note when it ran (one short append), so the drain rate is measured
    # from the tasks themselves.
    with open(DONE, "a") as f:
        f.write("%f\\n" % time.time())

@app.task(bind=True, max_retries=3)
def fail_once(self, i, failed_at=None):
    if failed_at is None:
        raise self.retry(countdown={delay}, args=(i,), kwargs={{"failed_at": time.time()}})
    with open(DELAYS, "a") as f:
        f.write("%f\\n" % (time.time() - failed_at))
''')
        env = dict(os.environ, PYTHONPATH=tasks_dir)
        celery_bin = os.path.join(venv, "bin", "celery")

        def publish(task, count):
            code = (f"import time, benchtasks as b\nt=time.time()\n"
                    f"for i in range({count}): b.{task}.delay(i)\nprint(time.time()-t)\n")
            r = subprocess.run([py, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=tasks_dir)
            return float(r.stdout.strip().splitlines()[-1])

        def worker():
            out = open(os.path.join(self.work, "celery-worker.log"), "w", encoding="utf-8")
            p = subprocess.Popen([celery_bin, "-A", "benchtasks", "worker", "-c", "2", "-P", "prefork",
                                  "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "warning"],
                                 env=env, cwd=tasks_dir, stdout=out, stderr=subprocess.STDOUT)
            self.procs.append(("celery", p))
            return p

        log(f"celery {version}: publishing {n} no-op tasks")
        pub_s = publish("noop", n)
        # Drain: from the first task's completion to the last one's, each task noting its time.
        p = worker()
        deadline = time.time() + 900
        while True:
            done = open(done_file, encoding="ascii").read().split() if os.path.exists(done_file) else []
            if len(done) >= n:
                break
            if time.time() > deadline or p.poll() is not None:
                raise RuntimeError(f"celery did not drain: {len(done)} of {n} tasks ran")
            time.sleep(0.2)
        stamps = sorted(float(x) for x in done)
        drain_s = max(stamps[-1] - stamps[0], 1e-6) * n / max(n - 1, 1)
        # Retry-delay accuracy under the same kind of load.
        log(f"celery: {retry_n} tasks failing once with a {delay} s countdown")
        publish("fail_once", retry_n)
        deadline = time.time() + 900
        while True:
            lines = open(delays_file, encoding="ascii").read().split() if os.path.exists(delays_file) else []
            if len(lines) >= retry_n:
                break
            if time.time() > deadline or p.poll() is not None:
                raise RuntimeError(f"celery retries: only {len(lines)} of {retry_n} came back")
            time.sleep(0.2)
        self.stop(p)
        delays = sorted(float(x) for x in lines)
        self.results["celery"] = {
            "version": version, "tasks": n, "publish_rate": n / pub_s, "drain_rate": n / drain_s,
            "retry": summary(delays, retry_n, delay),
        }
        self.mgmt.delete_vhost(vhost)
        log(f"celery: publish {n / pub_s:.0f}/s, drain {n / drain_s:.0f}/s, retry {self.results['celery']['retry']}")

    # -- 4: sagas and scale ------------------------------------------------------------------
    def sagas_and_scale(self):
        """Sagas per second with the built-in Rust participants (order sagas) and with HTTP
        participants (`--participants http`: the `shop` saga of the same shape, each command an
        HTTP subscription to an in-process participant), alternating, in the same database;
        `--saga-rounds` pairs (the smoke run: one pair of 50 sagas)."""
        orders = 50 if self.smoke else self.a.orders
        rounds = 1 if self.smoke else self.a.saga_rounds
        db = self.fresh_db("warren_suite_sagas")
        for rnd in range(1, rounds + 1):
            for mode in ("rust", "http"):
                load_start = os.getloadavg()[0]
                rows = self.run_bench(
                    ["sagas", "--orders", str(orders), "--clients", "20" if self.smoke else "100",
                     "--participants", mode],
                    self.env(WARREN_AMQP__URL=self.amqp, WARREN_DATABASE__URL=db))
                for r in rows:
                    r.setdefault("participants", mode)
                    r.update({"round": rnd, "load_start": round(load_start, 2),
                              "load_end": round(os.getloadavg()[0], 2)})
                self.results["sagas"] += rows
        n = 1000 if self.smoke else self.a.messages // 5
        db = self.fresh_db("warren_suite_scale")
        self.results["scale"] += self.run_bench(
            ["scale", "--messages", str(n), "--processes", "1,2"],
            self.env(WARREN_AMQP__URL=self.amqp, WARREN_DATABASE__URL=db))

    # -- 5: HTTP subscriptions --------------------------------------------------------------
    def subscriptions(self):
        """warren's subscription deliveries against the bare lapin+reqwest relay, in one
        `warren-bench subscriptions` run (its own scratch vhost, deleted after; the inbox in a
        fresh PostgreSQL database). The smoke run: a few hundred messages per phase."""
        if self.smoke:
            n, lat_n, lat_rate = 200, 100, 500
        else:
            n, lat_n, lat_rate = self.a.sub_messages, self.a.sub_latency_messages, self.a.sub_latency_rate
        db = self.fresh_db("warren_suite_subs")
        # Twice: with the inbox (the default: a database read and write per delivery) and
        # with `inbox = false`; the bare relay is measured again in each run.
        for inbox in ("true", "false"):
            load_start = os.getloadavg()[0]
            rows = self.run_bench(
                ["subscriptions", "--messages", str(n), "--concurrency", "1,16,64",
                 "--latency-messages", str(lat_n), "--latency-rate", str(lat_rate),
                 "--inbox", inbox],
                self.env(WARREN_AMQP__URL=self.amqp, WARREN_DATABASE__URL=db))
            # The 1-minute load average around the run: on 2 CPUs, anything else running (a
            # compile) shows here and skews both relays.
            for r in rows:
                r["load_start"], r["load_end"] = round(load_start, 2), round(os.getloadavg()[0], 2)
                r.setdefault("inbox", inbox == "true")
            self.results["subscriptions"] += rows

    # -- 6: what the message format costs the broker -------------------------------------------
    def headers(self):
        """`warren-bench header-cost`: RabbitMQ's CPU per message for the bare body, warren's
        envelope without the `ce-*` headers and with them (issue 20 point 3), in alternating
        rounds on one quorum queue of a scratch vhost. The bare message is the ceiling."""
        n, rounds = (500, 1) if self.smoke else (self.a.header_messages, 3)
        load_start = os.getloadavg()[0]
        rows = self.run_bench(["header-cost", "--messages", str(n), "--rounds", str(rounds)],
                              self.env(WARREN_AMQP__URL=self.amqp))
        for r in rows:
            r["load_start"], r["load_end"] = round(load_start, 2), round(os.getloadavg()[0], 2)
        self.results["headers"] += rows

    def run(self):
        steps = [("http", self.http), ("raw_and_jobs", self.raw_and_jobs), ("retry", self.retry)]
        if not self.smoke or self.a.celery:
            steps.append(("celery", self.celery))
        steps.append(("sagas_and_scale", self.sagas_and_scale))
        steps.append(("subscriptions", self.subscriptions))
        steps.append(("headers", self.headers))
        try:
            for name, step in steps:
                if self.a.only and name not in self.a.only.split(","):
                    continue
                t = time.time()
                step()
                log(f"step {name} took {time.time() - t:.0f} s")
        finally:
            self.cleanup()


def summary(delays, expected, delay):
    if not delays:
        return {"returned": 0, "expected": expected, "delay_s": delay}
    q = statistics.quantiles(delays, n=100, method="inclusive") if len(delays) > 1 else [delays[0]] * 99
    return {"returned": len(delays), "expected": expected, "delay_s": delay, "min_s": delays[0],
            "p50_s": statistics.median(delays), "p99_s": q[98], "max_s": delays[-1]}


# -- sanity (the smoke run's assertions) ------------------------------------------------------
def sanity(res):
    bad = []
    for r in res.get("headers", []):
        for variant, rate in r["publish_rate"].items():
            if not rate:
                bad.append(f"header cost: no message published ({variant})")
        for variant, us in r["broker_us_per_message"].items():
            if not us > 0:
                bad.append(f"header cost: no broker CPU measured ({variant})")
    for r in res["http"]:
        tag = f"{r['mode']} at {r['concurrency']} connections"
        if not r["rps"] or r["ok"] == 0:
            bad.append(f"{tag}: no successful request")
        if r["non2xx"]:
            bad.append(f"{tag}: {r['non2xx']} non-2xx answers {r['statuses']}")
        if any(r["socket_errors"].values()):
            bad.append(f"{tag}: socket errors {r['socket_errors']}")
        if r["mode"] != "sync" and r.get("queued") is not None:
            # Every 202 is in the queue; at most the requests in flight when wrk stopped more.
            if not r["ok"] <= r["queued"] <= r["ok"] + r["concurrency"]:
                bad.append(f"{tag}: {r['ok']} accepted but {r['queued']} queued (lost or extra)")
    sync_ok = sum(r["ok"] for r in res["http"] if r["mode"] == "sync")
    if res.get("sync_mails") is not None and res["http"] and res["sync_mails"] < sync_ok:
        bad.append(f"sync mode: {sync_ok} answered but only {res['sync_mails']} mails received")
    for key, fields in (("raw", ["publish_rate", "drain_rate", "e2e_rate"]),
                        ("jobs", ["publish_rate", "drain_rate", "e2e_rate"]),
                        ("sagas", ["rate"]), ("scale", ["drain_rate"])):
        for r in res[key]:
            for f in fields:
                if not r.get(f) or r[f] <= 0:
                    bad.append(f"{key}: {f} is {r.get(f)}")
    for r in res["sagas"]:
        tag = f"sagas ({r.get('participants', 'rust')} participants, round {r.get('round', 1)})"
        if r.get("completed") != r.get("orders"):
            bad.append(f"{tag}: {r.get('completed')} of {r.get('orders')} sagas completed")
        h = r.get("http")
        if r.get("participants") == "http" and not h:
            bad.append(f"{tag}: no counts from the HTTP participants")
        elif h:
            # Each command's effect once (per Idempotency-Key), none refused; a repeat is
            # allowed (a retry), a missing or extra effect is not.
            if h["effects"] != h["expected_effects"]:
                bad.append(f"{tag}: {h['effects']} effects at the participants, {h['expected_effects']} expected")
            if h["refused"]:
                bad.append(f"{tag}: {h['refused']} requests broke the participant contract (400)")
            if h["requests"] < h["effects"]:
                bad.append(f"{tag}: {h['requests']} requests for {h['effects']} effects")
        if "warren_cpu_ms_per_saga" in r and not r["warren_cpu_ms_per_saga"] > 0:
            bad.append(f"{tag}: warren's CPU per saga is {r['warren_cpu_ms_per_saga']}")
    for r in res["retry"]:
        if r["returned"] != r["jobs"]:
            bad.append(f"retry-delay: {r['returned']} of {r['jobs']} came back")
        if r["min_s"] < r["delay_s"] * 0.9:
            bad.append(f"retry-delay: a job came back after {r['min_s']:.2f} s, before the {r['delay_s']} s delay")
    c = res.get("celery") or {}
    if c and c["retry"]["returned"] != c["retry"]["expected"]:
        bad.append("celery: retries lost")
    for r in res.get("subscriptions", []):
        for side in ("warren", "bare"):
            f = r[side]
            tag = f"subscriptions (inbox {'on' if r.get('inbox', True) else 'off'}): {side} at concurrency {r['concurrency']}"
            if not f.get("rate") or f["rate"] <= 0:
                bad.append(f"{tag}: rate is {f.get('rate')}")
            if f["missing"] or f["duplicates"] or f["strays"]:
                bad.append(f"{tag}: {f['missing']} missing, {f['duplicates']} duplicates, "
                           f"{f['strays']} strays (each message must arrive exactly once)")
    return bad


# -- report ----------------------------------------------------------------------------------
def fmt(n, digits=0):
    if n is None:
        return "-"
    return f"{n:,.{digits}f}"


def ms(v):
    if v is None:
        return "-"
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"


def http_row(res, mode, c):
    for r in res["http"]:
        if r["mode"] == mode and r["concurrency"] == c:
            return r
    return None


def render(res, meta):
    L = []
    conc = sorted({r["concurrency"] for r in res["http"]})
    L.append("## The benchmark suite (generated)")
    L.append("")
    L.append("_Written by `scripts/bench-suite.sh`: everything between the `bench:suite` markers is "
             "replaced on each run; notes go outside them. Raw figures: `docs/bench/suite.json`._")
    L.append("")
    L.append(f"- Date: {meta['date']}; git commit `{meta['commit']}`")
    L.append(f"- Machine: {meta['machine']}; wrk, warren, RabbitMQ, PostgreSQL and Celery share these CPUs")
    L.append(f"- Versions: {meta['versions']}")
    L.append(f"- Command: `{meta['command']}`")
    if provenance(meta):
        L.append(provenance(meta))
    L.append(f"- HTTP runs: `wrk -t2 -cN -d{meta['seconds']}s --latency --timeout 10s` with a ~200-byte JSON "
             "`user.registered` body (a new user id and e-mail address per request), one run per cell, in rounds "
             "(event-driven, bare loop, sync at 100, then at 500, ...), queues purged before each run. "
             "warren: `warren serve` (release), PostgreSQL, the default topology (quorum queues; each "
             "`user.registered` lands in `warren.audit` and `warren.notifications`).")
    L.append("")
    L.append("![req/s by concurrency](docs/bench/suite.svg)")
    L.append("")
    L.append("### 1. The article's table: synchronous against event-driven")
    L.append("")
    L.append("Sync mode (`?mode=sync`) does the consumers' work inside the request: the notification row, "
             "the welcome e-mail over SMTP to a local receiver (`warren-bench smtp-sink`) with its `email_log` "
             "row, and the audit row. Event-driven mode publishes with a confirm and answers 202.")
    L.append("")
    L.append("| concurrency | sync req/s | p50 | p99 | max | event-driven req/s | p50 | p99 | max | gain | "
             "article sync | article event-driven | warren / article (event-driven) |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in conc:
        s, e = http_row(res, "sync", c), http_row(res, "event", c)
        if not s or not e:
            continue
        art_e, art_s = ARTICLE["event"].get(c), ARTICLE["sync"].get(c)
        L.append(f"| {c} | {fmt(s['rps'])} | {ms(s['p50_ms'])} | {ms(s['p99_ms'])} | {ms(s['max_ms'])} | "
                 f"{fmt(e['rps'])} | {ms(e['p50_ms'])} | {ms(e['p99_ms'])} | {ms(e['max_ms'])} | "
                 f"{e['rps'] / s['rps']:.1f}x | {fmt(art_s)} | {fmt(art_e)} | "
                 f"{(e['rps'] / art_e if art_e else 0):.1f}x |")
    L.append("")
    errs = [r for r in res["http"] if r["non2xx"] or any(r["socket_errors"].values())]
    err_text = "; ".join(
        f"{r['mode']} at {r['concurrency']}: non-2xx {r['non2xx']}, sockets {r['socket_errors']}" for r in errs
    )
    sync_ok = sum(r["ok"] for r in res["http"] if r["mode"] == "sync")
    L.append(f"Errors: {err_text or 'none'}. Mails received by the SMTP receiver in sync mode: "
             f"{fmt(res.get('sync_mails'))} (sync answers: {fmt(sync_ok)}).")
    L.append("")
    L.append("### 2. Against the ceiling, in the same run")
    L.append("")
    L.append("The bare loop is `warren-bench bare-server`: warp and lapin only, one connection, 8 confirm "
             "channels, one persistent `mandatory` publish per request to the same exchange and bindings, "
             "answered after the confirm.")
    L.append("")
    L.append("| concurrency | warren event-driven req/s | p99 | bare warp+lapin req/s | p99 | warren / bare | queued = accepted |")
    L.append("|---:|---:|---:|---:|---:|---:|---|")
    for c in conc:
        e, b = http_row(res, "event", c), http_row(res, "bare", c)
        if not e or not b:
            continue
        lost = "yes" if e.get("queued") is not None and e["ok"] <= e["queued"] <= e["ok"] + c else "NO"
        L.append(f"| {c} | {fmt(e['rps'])} | {ms(e['p99_ms'])} | {fmt(b['rps'])} | {ms(b['p99_ms'])} | "
                 f"{e['rps'] / b['rps']:.2f} | {lost} |")
    L.append("")
    if any(r["mode"] == "event-1q" for r in res["http"]):
        L.append("The same with an event that lands in one queue (`bench.single`, only `warren.audit` "
                 "binds it), half the broker's work per request:")
        L.append("")
        L.append("| concurrency | warren req/s | p99 | bare warp+lapin req/s | p99 | warren / bare | "
                 "warren / article (event-driven) |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|")
        for c in conc:
            e, b = http_row(res, "event-1q", c), http_row(res, "bare-1q", c)
            if not e or not b:
                continue
            art_e = ARTICLE["event"].get(c)
            L.append(f"| {c} | {fmt(e['rps'])} | {ms(e['p99_ms'])} | {fmt(b['rps'])} | {ms(b['p99_ms'])} | "
                     f"{e['rps'] / b['rps']:.2f} | {(e['rps'] / art_e if art_e else 0):.1f}x |")
        L.append("")
    if res["raw"]:
        L.append("| raw lapin (`warren-bench raw`) | messages | publish msg/s | drain msg/s | both at once msg/s |")
        L.append("|---|---:|---:|---:|---:|")
        for r in res["raw"]:
            L.append(f"| {r['queue_type']} queue, {r['channels']} channels, {r['in_flight']} confirms in flight, "
                     f"prefetch {r['prefetch']} | {fmt(r['messages'])} | {fmt(r['publish_rate'])} | "
                     f"{fmt(r['drain_rate'])} | {fmt(r['e2e_rate'])} |")
        L.append("")
    raw_q = next((r for r in res["raw"] if r["queue_type"] == "quorum"), None)
    if res["jobs"]:
        L.append("| warren job draining (`warren-bench jobs --handler noop`, inbox on) | messages | drain jobs/s | "
                 "publish and drain at once | drain / raw consumer (quorum) |")
        L.append("|---|---:|---:|---:|---:|")
        for r in res["jobs"]:
            ratio = f"{r['drain_rate'] / raw_q['drain_rate']:.2f}" if raw_q else "-"
            L.append(f"| {r['database']}, concurrency {r['concurrency']}, prefetch {r['prefetch']} | "
                     f"{fmt(r['messages'])} | {fmt(r['drain_rate'])} | {fmt(r['e2e_rate'])} | {ratio} |")
        L.append("")
    L.append("### 3. Against Celery, on the same broker")
    L.append("")
    c = res.get("celery") or {}
    w = res["retry"][0] if res["retry"] else None
    jobs_pg = next((r for r in res["jobs"] if r["database"] == "PostgreSQL"), None)
    if c:
        L.append(f"Celery {c['version']} (virtualenv, `pip install {CELERY_VERSION}`), worker `-c 2 -P prefork`, "
                 "no result backend; warren figures from the same run.")
        L.append("")
        L.append("| | Celery | warren |")
        L.append("|---|---:|---:|")
        L.append(f"| publish, msg/s | {fmt(c['publish_rate'])} (`task.delay`, one client) | "
                 f"{fmt(jobs_pg['publish_rate']) if jobs_pg else '-'} (confirmed publishes) |")
        L.append(f"| drain, no-op task/job per s | {fmt(c['drain_rate'])} | "
                 f"{fmt(jobs_pg['drain_rate']) if jobs_pg else '-'} (inbox on, PostgreSQL) |")
        cr = c["retry"]
        L.append(f"| retry delay, {cr['expected']} tasks failing once, configured {cr['delay_s']} s: "
                 f"min / median / p99 / max | {cr.get('min_s', 0):.2f} / {cr.get('p50_s', 0):.2f} / "
                 f"{cr.get('p99_s', 0):.2f} / {cr.get('max_s', 0):.2f} s | "
                 + (f"{w['min_s']:.2f} / {w['p50_s']:.2f} / {w['p99_s']:.2f} / {w['max_s']:.2f} s |" if w else "- |"))
    elif w:
        L.append("Celery was not run in this set.")
        L.append("")
        L.append(f"warren's retry delay, {w['jobs']} jobs failing once, configured {w['delay_s']} s: "
                 f"min {w['min_s']:.2f} / median {w['p50_s']:.2f} / p99 {w['p99_s']:.2f} / max {w['max_s']:.2f} s.")
    L.append("")
    L.append("### 4. Sagas, scale-out, memory")
    L.append("")
    L += render_sagas(res["sagas"])
    if res["scale"]:
        base = res["scale"][0]["drain_rate"]
        L.append("- Job throughput by worker processes (`warren worker --modules notifications`, PostgreSQL): " +
                 ", ".join(f"{r['processes']}: {fmt(r['drain_rate'])} jobs/s ({r['drain_rate'] / base:.2f}x)"
                           for r in res["scale"]) + ".")
    rss = res["rss"]
    if rss:
        L.append(f"- `warren serve` RSS: {fmt(rss.get('serve_idle_mb'), 1)} MiB idle, "
                 f"{fmt(rss.get('serve_load_mb'), 1)} MiB at most under {rss.get('serve_load_conns')} connections.")
    L.append("")
    return "\n".join(L)


def saga_mode(r):
    return r.get("participants", "rust")


def saga_ratio(rows):
    """HTTP participants' sagas/s over the Rust participants' (medians of the rounds), and
    the same for warren's CPU per saga; None when a mode is missing."""
    by = {m: [r for r in rows if saga_mode(r) == m] for m in ("rust", "http")}
    if not by["rust"] or not by["http"]:
        return None
    rate = {m: statistics.median(r["rate"] for r in v) for m, v in by.items()}
    cpu = {m: statistics.median(r.get("warren_cpu_ms_per_saga") or 0 for r in v) for m, v in by.items()}
    return {"rate": rate, "ratio": rate["http"] / rate["rust"] if rate["rust"] else 0,
            "cpu": cpu, "cpu_ratio": cpu["http"] / cpu["rust"] if cpu["rust"] else None}


def render_sagas(rows):
    """Section 4's saga lines: a row per run (mode and round), then the HTTP / Rust ratio."""
    if not rows:
        return []
    r0 = rows[0]
    L = [f"- Sagas end to end (`warren-bench sagas`, {r0['database']}, {fmt(r0['orders'])} sagas per run, "
         f"{r0['clients']} HTTP clients, {r0.get('concurrency', 32)} handlers per module or subscription; "
         "every role in one process). **Rust**: the order saga (`POST /v1/orders`; 4 steps done by the "
         "built-in `orders`, `inventory`, `payments`, `notifications` modules). **HTTP**: the `shop` saga "
         "from a definitions file, the same shape (4 steps, 3 compensations; `POST /v1/sagas/shop` with the "
         "same order as payload), each command an HTTP subscription (production defaults: inbox on, "
         "binary CloudEvents, keep-alive) to an in-process hyper participant that does its effect once per "
         "`Idempotency-Key` in memory and answers 200 with a small JSON result. Saga duration is the wait in "
         "the backlog under saturation, not latency. warren CPU: the bench process's CPU from the first POST "
         "to the last saga's end, less the HTTP clients' and participants' threads (`/proc`); machine busy: "
         "every CPU's busy time over the same span (`/proc/stat`), whoever used it (RabbitMQ, PostgreSQL, "
         "anything else running).", ""]
    L.append("| participants | round | sagas/s | saga p50 | p99 | warren CPU per saga | HTTP requests per saga | "
             "machine busy (cores) | load (1 min) start / end |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in sorted(rows, key=lambda r: (saga_mode(r) != "rust", r.get("round", 1))):
        h = r.get("http") or {}
        cpu = r.get("warren_cpu_ms_per_saga")
        cpu = f"{cpu:.1f} ms" if cpu is not None else "-"
        reqs = f"{h['requests_per_saga']:.2f}" if h else "-"
        load = f"{r['load_start']} / {r['load_end']}" if "load_start" in r else "-"
        busy = fmt(r.get("machine_busy_cores"), 2)
        L.append(f"| {saga_mode(r)} | {r.get('round', 1)} | **{fmt(r['rate'])}** | {ms(r['p50_ms'])} | "
                 f"{ms(r['p99_ms'])} | {cpu} | {reqs} | {busy} | {load} |")
    L.append("")
    q = saga_ratio(rows)
    if q:
        cpu = f"; warren's CPU per saga {q['cpu_ratio']:.2f}x the Rust participants'" if q["cpu_ratio"] else ""
        L.append(f"- **HTTP / Rust participants: {q['ratio']:.2f}** of the sagas per second "
                 f"({fmt(q['rate']['http'])} against {fmt(q['rate']['rust'])}, medians of the rounds; the Rust "
                 f"participants in the same run are the ceiling){cpu}.")
    return L


SUBS_GOAL = 0.8  # issue 18 point 9: warren at least 0.8 of the bare relay


def render_subscriptions(res, meta):
    rows = sorted(res.get("subscriptions", []), key=lambda r: (not r.get("inbox", True), r["concurrency"]))
    L = []
    L.append("## HTTP subscriptions against a bare relay (generated)")
    L.append("")
    L.append("_Written by `scripts/bench-suite.sh` (step `subscriptions`, `warren-bench subscriptions`): "
             "everything between the `bench:subscriptions` markers is replaced when that step runs; notes "
             "go outside them. Raw figures: the `bench:data subscriptions` comment below._")
    L.append("")
    L.append(f"- Date: {meta['date']}; git commit `{meta['commit']}`")
    L.append(f"- Machine: {meta['machine']}; the receiver, both relays, RabbitMQ and PostgreSQL share these CPUs")
    L.append(f"- Versions: {meta['versions']}")
    L.append(f"- Command: `{meta['command']}`")
    if rows:
        r0 = rows[0]
        L.append(f"- Throughput: {r0['messages']:,} messages pre-filled in `warren.sub.bench` (a quorum queue "
                 "of a scratch vhost, fed through `warren.events`) before the relay starts; deliveries per "
                 "second from the first arrival at the receiver to the last. Latency: "
                 f"{r0['latency_messages']:,} messages published at {r0['latency_rate']} msg/s while the relay "
                 "runs; publish (the stamp in the event's data) to the receiver reading it.")
    if rows and "load_start" in rows[0]:
        loads = "; ".join(sorted({f"inbox {'on' if r.get('inbox', True) else 'off'}: {r['load_start']} / {r['load_end']}"
                                  for r in rows}))
        L.append(f"- Load average (1 min) at each run's start / end: {loads} "
                 "(2 CPUs: above ~2, something else was running and the figures are disturbed)")
    L.append("- Receiver: in the bench process, on a thread and single-threaded runtime of its own (warp), "
             "answers 204 at once; it counts every message by its sequence number (each must arrive once).")
    L.append("- warren: `App` with the worker role running only the subscription (binary CloudEvents, "
             "`concurrency` = C, prefetch 2C; with the inbox (the default), the runner's inbox check and row "
             "in PostgreSQL, batched; with `inbox = false`, none; then the ack). "
             "Bare relay (the ceiling): lapin consumer, prefetch 2C, at most C POSTs in flight, one pooled "
             "`reqwest` client, the message body as is (the whole envelope, ~310 bytes; warren sends the event's data, ~160) with `content-type`, "
             "`ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-time`, `traceparent`, `warren-attempt`, "
             "`warren-subscription`; ack after the 204. No inbox, no parsing, no signature.")
    L.append("")
    L.append(f"| inbox | concurrency (prefetch) | warren deliveries/s | bare relay deliveries/s | warren / bare "
             f"(goal {SUBS_GOAL}) | warren p50 / p99 | bare p50 / p99 | every message once |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        w, b = r["warren"], r["bare"]
        once = all(not (f["missing"] or f["duplicates"] or f["strays"]) for f in (w, b))
        mark = "" if r["ratio"] >= SUBS_GOAL else " (below)"
        def lat(f):
            # Below the publish rate the latency phase measures a growing backlog, not latency.
            return f"{ms(f['p50_ms'])} / {ms(f['p99_ms'])}" + (" (saturated)" if f["rate"] < r["latency_rate"] else "")
        L.append(f"| {'on' if r.get('inbox', True) else 'off'} | {r['concurrency']} ({r['prefetch']}) | {fmt(w['rate'])} | {fmt(b['rate'])} | "
                 f"{r['ratio']:.2f}{mark} | {lat(w)} | {lat(b)} | {'yes' if once else 'NO'} |")
    L.append("")
    if any(f["rate"] < r["latency_rate"] for r in rows for f in (r["warren"], r["bare"])):
        L.append("_(saturated): that relay drains slower than the latency phase publishes, so its figures "
                 "are the wait in a growing backlog, not delivery latency._")
        L.append("")
    data = json.dumps({"meta": meta, "records": rows}, separators=(",", ":")).replace("--", "-\\u002d")
    L.append(f"<!-- bench:data subscriptions {data} -->")
    return "\n".join(L)


def render_headers(res, meta):
    rows = res.get("headers", [])
    L = []
    L.append("## What the message format costs the broker (generated)")
    L.append("")
    L.append("_Written by `scripts/bench-suite.sh` (step `headers`, `warren-bench header-cost`): everything "
             "between the `bench:headers` markers is replaced when that step runs. Raw figures: the "
             "`bench:data headers` comment below._")
    L.append("")
    L.append(f"- Date: {meta['date']}; git commit `{meta['commit']}`")
    L.append(f"- Machine: {meta['machine']}")
    L.append(f"- Versions: {meta['versions']}")
    L.append(f"- Command: `{meta['command']}`")
    if rows:
        r0 = rows[0]
        L.append(f"- {r0['messages']:,} messages per variant and round, {r0['rounds']} rounds alternating the "
                 "three variants, 64 publishing tasks through warren's confirming publisher into one quorum "
                 "queue of a scratch vhost (purged between rounds); RabbitMQ's own CPU time "
                 "(`/proc/<pid>/stat` of its `beam.smp`) over each round, divided by the messages; the "
                 "median of the rounds. Load average (1 min) at start / end: "
                 f"{r0['load_start']} / {r0['load_end']}.")
    L.append("- **bare** (the ceiling): the event's data alone (~160 bytes), persistent, nothing else. "
             "**envelope**: warren's JSON envelope (~310 bytes) and its properties and headers "
             "(`message_id`, `type`, `timestamp`, `app_id`, `correlation_id`, `traceparent`, "
             "`x-request-id`, `x-warren-attempt`), the `ce-*` headers off (a bench-only switch). "
             "**cloudevents**: the same with `ce-specversion`, `ce-id`, `ce-source`, `ce-type`, "
             "`ce-time`, `ce-subject`, as warren publishes every message.")
    L.append("")
    L.append("| variant | RabbitMQ CPU µs / message | / bare | publish rate (msg/s) |")
    L.append("|---|---:|---:|---:|")
    for r in rows:
        us, rate = r["broker_us_per_message"], r["publish_rate"]
        for v in ("bare", "envelope", "cloudevents"):
            rel = us[v] / us["bare"] if us["bare"] else 0
            L.append(f"| {v} | {us[v]:.1f} | {rel:.2f} | {fmt(rate[v])} |")
        L.append("")
        L.append(f"- **`ce-*` headers / envelope alone: {r['ratio']['cloudevents_over_envelope']:.2f}** of the "
                 f"broker's CPU per message; envelope / bare {r['ratio']['envelope_over_bare']:.2f}; "
                 f"warren's message as published / bare {r['ratio']['cloudevents_over_bare']:.2f}.")
    L.append("")
    data = json.dumps({"meta": meta, "records": rows}, separators=(",", ":")).replace("--", "-\\u002d")
    L.append(f"<!-- bench:data headers {data} -->")
    return "\n".join(L)


def svg(res):
    conc = sorted({r["concurrency"] for r in res["http"]})
    series = [("article sync", "#bbbbbb", lambda c: ARTICLE["sync"].get(c)),
              ("article event-driven", "#888888", lambda c: ARTICLE["event"].get(c)),
              ("warren sync", "#f2a541", lambda c: (http_row(res, "sync", c) or {}).get("rps")),
              ("warren event-driven", "#2a7ab0", lambda c: (http_row(res, "event", c) or {}).get("rps")),
              ("bare warp+lapin", "#5aa05a", lambda c: (http_row(res, "bare", c) or {}).get("rps"))]
    top = max([v for _, _, f in series for c in conc for v in [f(c)] if v] or [1])
    W, H, left, bottom, topm = 760, 380, 70, 60, 40
    ph = H - bottom - topm
    group_w = (W - left - 20) / max(len(conc), 1)
    bar_w = group_w * 0.8 / len(series)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">Requests per second by concurrent connections (higher is better)</text>']
    step = 10 ** max(len(str(int(top))) - 1, 0)
    ticks = [t * step for t in range(0, int(top / step) + 2)]
    if len(ticks) > 12:
        ticks = ticks[::2]
    top = max(ticks[-1], 1)
    for t in ticks:
        y = topm + ph - ph * t / top
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{W - 20}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{t:,}</text>')
    for gi, c in enumerate(conc):
        gx = left + gi * group_w + group_w * 0.1
        for si, (name, color, f) in enumerate(series):
            v = f(c) or 0
            h = ph * v / top
            x = gx + si * bar_w
            out.append(f'<rect x="{x:.1f}" y="{topm + ph - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="{color}"><title>{name} at {c}: {v:,.0f} req/s</title></rect>')
        out.append(f'<text x="{gx + group_w * 0.4:.1f}" y="{topm + ph + 18}" text-anchor="middle">{c} connections</text>')
    lx = left
    for name, color, _ in series:
        out.append(f'<rect x="{lx}" y="{H - 22}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{lx + 16}" y="{H - 12}">{name}</text>')
        lx += 20 + 7 * len(name) + 10
    out.append("</svg>")
    return "\n".join(out) + "\n"


def meta(a):
    def cmd(*c):
        try:
            return subprocess.run(c, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo", encoding="ascii", errors="replace"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    rmq = cmd("rabbitmqctl", "-q", "eval", "rabbit_misc:version().").strip('"') or "?"
    pg = cmd("psql", "--version")
    commit = cmd("git", "-C", ROOT, "rev-parse", "--short", "HEAD")
    # The suite's own outputs do not make the code "uncommitted".
    if cmd("git", "-C", ROOT, "status", "--porcelain", "--", ".", ":!BENCHMARKS.md", ":!docs/bench"):
        commit += " (with uncommitted changes)"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "machine": f"{os.cpu_count()} CPUs ({cpu}), {mem:.1f} GiB RAM, Linux {platform.release()}",
        "versions": f"RabbitMQ {rmq}; {pg}; {cmd('rustc', '--version')}; {cmd('wrk', '-v').splitlines()[0] if cmd('wrk', '-v') else 'wrk'}; Python {platform.python_version()}",
        "command": a.command,
        "seconds": a.seconds,
    }


SUITE_KEYS = ("http", "raw", "jobs", "retry", "celery", "sagas", "scale")
# The results each step of the suite's block writes.
STEP_KEYS = {"http": ("http", "rss", "sync_mails"), "raw_and_jobs": ("raw", "jobs"), "retry": ("retry",),
             "celery": ("celery",), "sagas_and_scale": ("sagas", "scale")}


def carry_over(res, ran, previous):
    """With `--only`, the suite's block would lose the figures of the steps that did not
    run: take those from `previous` (the last docs/bench/suite.json) and record, per step,
    which run its figures come from (`meta.steps`: date, commit, command)."""
    own = {k: res["meta"].get(k, "?") for k in ("date", "commit", "command", "machine")}
    before = (previous or {}).get("meta", {})
    steps = {}
    for step, keys in STEP_KEYS.items():
        if step in ran:
            steps[step] = own
        elif previous and any(previous.get(k) for k in keys):
            for k in keys:
                if k in previous:
                    res[k] = previous[k]
            steps[step] = before.get("steps", {}).get(step) or {k: before.get(k, "?") for k in own}
    res["meta"]["steps"] = steps


def provenance(meta):
    """The line naming where each step's figures come from, when not all from this run."""
    steps = meta.get("steps") or {}
    fields = ("date", "commit", "command", "machine")
    own = tuple(meta.get(k, "?") for k in fields)
    others = {}
    for step, m in steps.items():
        key = tuple(m.get(k, "?") for k in fields)
        if key != own:
            others.setdefault(key, []).append(step)
    if not others:
        return None
    ran = [s for s in steps if s not in {x for v in others.values() for x in v}]
    parts = [f"{', '.join(f'`{s}`' for s in v)} from {d} (commit `{c}`, `{cmd}`, on {mach})"
             for (d, c, cmd, mach), v in others.items()]
    return (f"- Steps: {', '.join(f'`{s}`' for s in ran)} from this run; " + "; ".join(parts) +
            " (carried over from docs/bench/suite.json: `--only` ran the others alone)")


def suite_ran(res):
    """Whether any step of the suite's own block ran (not only `subscriptions`)."""
    return any(res.get(k) for k in SUITE_KEYS)


def replace_block(text, name, body, after=None):
    """Puts `body` between the `bench:{name}` markers of `text`; without them, after the
    `after` block's end marker (or the title line)."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = start + "\n" + body + "\n" + end
    pat = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pat.search(text):
        return pat.sub(lambda _: block, text)
    anchor = f"<!-- bench:{after}:end -->" if after else None
    if anchor and anchor in text:
        return text.replace(anchor, anchor + "\n\n" + block, 1)
    head, sep, rest = text.partition("\n")
    return head + sep + "\n" + block + "\n\n" + rest


def write_report(res, path):
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmarks\n"
    if suite_ran(res):
        text = replace_block(text, "suite", render(res, res["meta"]))
    if res.get("subscriptions"):
        text = replace_block(text, "subscriptions", render_subscriptions(res, res["meta"]), after="suite")
    if res.get("headers"):
        text = replace_block(text, "headers", render_headers(res, res["meta"]), after="subscriptions")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True, help="the warren binary")
    p.add_argument("--bench-bin", required=True, help="the warren-bench binary")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--celery", action="store_true", help="run Celery in the smoke run too")
    p.add_argument("--only", help="comma-separated steps: http,raw_and_jobs,retry,celery,sagas_and_scale,"
                                   "subscriptions,headers")
    p.add_argument("--header-messages", type=int, default=int(os.environ.get("BENCH_HEADER_MESSAGES", "20000")),
                   help="headers: messages per variant and round")
    p.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", "15")))
    p.add_argument("--messages", type=int, default=int(os.environ.get("BENCH_MESSAGES", "100000")))
    p.add_argument("--celery-tasks", type=int, default=int(os.environ.get("BENCH_CELERY_TASKS", "20000")))
    p.add_argument("--retry-jobs", type=int, default=int(os.environ.get("BENCH_RETRY_JOBS", "2000")))
    p.add_argument("--orders", type=int, default=int(os.environ.get("BENCH_ORDERS", "2000")))
    p.add_argument("--saga-rounds", type=int, default=int(os.environ.get("BENCH_SAGA_ROUNDS", "2")),
                   help="sagas: pairs of runs (Rust participants, then HTTP ones), alternating")
    p.add_argument("--sub-messages", type=int, default=int(os.environ.get("BENCH_SUB_MESSAGES", "20000")),
                   help="subscriptions: messages pre-filled per throughput phase")
    p.add_argument("--sub-latency-messages", type=int,
                   default=int(os.environ.get("BENCH_SUB_LATENCY_MESSAGES", "5000")),
                   help="subscriptions: messages per latency phase")
    p.add_argument("--sub-latency-rate", type=int, default=int(os.environ.get("BENCH_SUB_LATENCY_RATE", "500")),
                   help="subscriptions: publish rate of the latency phases (msg/s)")
    p.add_argument("--venv", default=os.environ.get("BENCH_VENV", os.path.join(ROOT, "target", "bench-venv")))
    p.add_argument("--amqp-url", default=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    p.add_argument("--management-url", default=os.environ.get("BENCH_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"))
    p.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", "postgres://warren:warren@127.0.0.1:5432"))
    p.add_argument("--no-write", action="store_true", help="print the report, write nothing")
    p.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"))
    p.add_argument("--command", default="scripts/bench-suite.sh")
    a = p.parse_args()
    os.environ.setdefault("WARREN_AMQP__MANAGEMENT_URL", a.management_url)
    suite = Suite(a)
    started = time.time()
    try:
        suite.run()
    except Exception:
        log("logs kept in", suite.work)
        raise
    res = suite.results
    res["meta"] = meta(a)
    res["meta"]["suite_seconds"] = round(time.time() - started)
    problems = sanity(res)
    res["problems"] = problems
    if a.only and not a.smoke and suite_ran(res):
        previous = None
        try:
            with open(os.path.join(ROOT, "docs", "bench", "suite.json"), encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, ValueError):
            log("no docs/bench/suite.json to carry the other steps' figures from")
        carry_over(res, a.only.split(","), previous)
    if suite_ran(res):
        print(render(res, res["meta"]))
    if res.get("subscriptions"):
        print(render_subscriptions(res, res["meta"]))
    if res.get("headers"):
        print(render_headers(res, res["meta"]))
    if a.no_write and not a.smoke:
        json.dump(res, sys.stderr, indent=1)
        return
    if a.smoke:
        shutil.rmtree(suite.work, ignore_errors=True)
        if problems:
            log("SMOKE FAILED:\n  " + "\n  ".join(problems))
            sys.exit(1)
        log(f"smoke run sane ({res['meta']['suite_seconds']} s)")
        return
    written = ["BENCHMARKS.md"]
    if suite_ran(res):
        os.makedirs(os.path.join(ROOT, "docs", "bench"), exist_ok=True)
        with open(os.path.join(ROOT, "docs", "bench", "suite.json"), "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(ROOT, "docs", "bench", "suite.svg"), "w", encoding="utf-8") as f:
            f.write(svg(res))
        written += ["docs/bench/suite.svg", "docs/bench/suite.json"]
    write_report(res, a.output)
    shutil.rmtree(suite.work, ignore_errors=True)
    if problems:
        log("problems:\n  " + "\n  ".join(problems))
    log(f"suite done in {res['meta']['suite_seconds']} s; {', '.join(written)} written")


if __name__ == "__main__":
    main()
