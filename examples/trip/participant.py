"""The shared part of the trip example's participants (seats.py, payments.py, tickets.py).

One small HTTP service per participant, standard library only (Python 3.11): it answers the
saga commands warren delivers (docs/participants.md), does each effect once per
`Idempotency-Key` in a SQLite ledger, verifies the Standard Webhooks signature when given a
secret, and has two endpoints for people and tests:

  GET  /ledger   every answer stored (by key), every request received, and the service's rows
  POST /faults   injected faults: {"fail": 503, "times": 2} (add "after_effect": true to
                 do the effect and then fail, as if the answer were lost),
                 {"hang_ms": 3000, "times": 1}, {"compensation_fails": true};
                 {} clears them; GET /faults shows them

A service module defines SCHEMA (its tables), TABLE (the one /ledger shows), execute(db, cmd)
and compensate(db, cmd), which return the step's result or raise Refused; then calls main().
"""

import argparse
import base64
import hashlib
import hmac
import json
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Refused(Exception):
    """A refusal: warren records it and the saga compensates (409 or 422 with a reason)."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Ledger:
    """The service's SQLite database: its own tables, the stored answers, the request log."""

    def __init__(self, path, schema):
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.lock = threading.Lock()
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS answers (
              key TEXT PRIMARY KEY, saga_id TEXT, step TEXT, action TEXT,
              status INTEGER, body TEXT, at REAL);
            CREATE TABLE IF NOT EXISTS requests (
              n INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT, action TEXT, attempt INTEGER,
              status INTEGER, at REAL);
            """
            + schema
        )

    def answer(self, key, cmd, action, do):
        """The answer stored under `key`, or `do(db)`'s, stored with its effect in one
        transaction (a compensation's refusal is not stored: an operator's retry asks again)."""
        with self.lock:
            row = self.db.execute(
                "SELECT status, body FROM answers WHERE key = ?", (key,)
            ).fetchone()
            if row is not None:
                return row["status"], json.loads(row["body"])
            self.db.execute("BEGIN")
            try:
                status, body = 200, do(self.db)
            except Refused as r:
                status, body = r.status, {"reason": r.reason}
                if action == "compensate":
                    self.db.execute("ROLLBACK")
                    return status, body
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute(
                "INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, cmd.get("saga_id"), cmd.get("step_name"), action, status,
                 json.dumps(body), time.time()),
            )
            self.db.execute("COMMIT")
            return status, body

    def log(self, key, action, attempt, status):
        with self.lock:
            self.db.execute(
                "INSERT INTO requests (key, action, attempt, status, at) VALUES (?, ?, ?, ?, ?)",
                (key, action, attempt, status, time.time()),
            )

    def dump(self, table):
        with self.lock:
            rows = lambda sql: [dict(r) for r in self.db.execute(sql)]
            answers = rows("SELECT * FROM answers ORDER BY at")
            for a in answers:
                a["body"] = json.loads(a["body"])
            return {
                "answers": answers,
                "requests": rows("SELECT * FROM requests ORDER BY n"),
                table: rows(f"SELECT * FROM {table}"),
            }


class Faults:
    """Faults injected over POST /faults, used up by the requests they hit."""

    def __init__(self):
        self.lock = threading.Lock()
        self.set({})

    def set(self, spec):
        allowed = {"fail", "times", "hang_ms", "after_effect", "compensation_fails"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"unknown fault field(s) {sorted(unknown)}; known: {sorted(allowed)}")
        with self.lock:
            self.spec = dict(spec)
            self.left = spec.get("times")  # None: until cleared

    def take(self):
        """The faults for this request: (fail status or None, whether it fails after the
        effect, hang ms, compensation fails)."""
        with self.lock:
            s = self.spec
            hit = (s.get("fail") or s.get("hang_ms")) and (self.left is None or self.left > 0)
            if hit and self.left is not None:
                self.left -= 1
            fail = s.get("fail") if hit else None
            hang = s.get("hang_ms", 0) if hit else 0
            return fail, bool(s.get("after_effect")), hang, bool(s.get("compensation_fails"))

    def show(self):
        with self.lock:
            return {**self.spec, "left": self.left}


def verify(secret, headers, body):
    """Whether a Standard Webhooks signature (`v1,<base64 HMAC-SHA256>`) of the body with
    `secret` (`whsec_<base64>`) is among the request's, within five minutes."""
    msg_id, ts = headers.get("webhook-id"), headers.get("webhook-timestamp")
    if not msg_id or not ts or not ts.isdigit() or abs(time.time() - int(ts)) > 300:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    want = "v1," + base64.b64encode(mac).decode()
    sigs = headers.get("webhook-signature", "").split()
    return any(hmac.compare_digest(want, s) for s in sigs)


def handler(name, service, ledger, faults, secret):
    class Handler(BaseHTTPRequestHandler):
        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):  # one line per command instead (below)
            pass

        def do_GET(self):
            if self.path == "/ledger":
                self.reply(200, ledger.dump(service.TABLE))
            elif self.path == "/faults":
                self.reply(200, faults.show())
            else:
                self.reply(404, {"reason": f"no {self.path} here"})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/faults":
                try:
                    faults.set(json.loads(body or b"{}"))
                except (ValueError, TypeError, AttributeError) as e:
                    return self.reply(400, {"reason": str(e)})
                return self.reply(200, faults.show())
            if secret and not verify(secret, self.headers, body):
                return self.reply(401, {"reason": "bad or missing webhook signature"})
            key = self.headers.get("Idempotency-Key")
            action = self.headers.get("warren-saga-action")
            if not key or action not in ("execute", "compensate"):
                return self.reply(400, {"reason": "not a saga command (no Idempotency-Key)"})
            cmd = json.loads(body)
            status, answer = self.saga_command(key, action, cmd)
            ledger.log(key, action, int(self.headers.get("warren-attempt", 0)), status)
            print(f"{name}: {action} {cmd.get('step_name')} {key} -> {status} "
                  f"{json.dumps(answer)}", file=sys.stderr, flush=True)
            self.reply(status, answer)

        def saga_command(self, key, action, cmd):
            fail, after_effect, hang_ms, compensation_fails = faults.take()
            if hang_ms:
                time.sleep(hang_ms / 1000)
            if fail and not after_effect:
                return fail, {"reason": f"injected fault: {fail}"}
            if action == "compensate" and compensation_fails:
                return 409, {"reason": f"{name} cannot undo it now (injected fault)"}
            do = service.execute if action == "execute" else service.compensate
            answer = ledger.answer(key, cmd, action, lambda db: do(db, cmd))
            if fail:  # the effect is done (or was already), but the answer is "lost"
                return fail, {"reason": f"injected fault after the effect: {fail}"}
            return answer

    return Handler


def main(name, service, default_port):
    """Parses the command line and serves until interrupted."""
    p = argparse.ArgumentParser(description=f"The trip example's {name} participant.")
    p.add_argument("--port", type=int, default=default_port, help="0: any free port")
    p.add_argument("--db", default=":memory:", help="the SQLite ledger file")
    p.add_argument("--secret", default=None, help="whsec_...: verify warren's signatures")
    a = p.parse_args()
    ledger = Ledger(a.db, service.SCHEMA)
    server = ThreadingHTTPServer(
        ("127.0.0.1", a.port), handler(name, service, ledger, Faults(), a.secret)
    )
    server.daemon_threads = True
    # The first line says where it listens (with --port 0, the port the system chose).
    print(f"{name} listening on http://127.0.0.1:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
