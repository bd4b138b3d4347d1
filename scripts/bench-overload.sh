#!/usr/bin/env bash
# Memory of `warren serve` under an overload: wrk with many connections against
# POST /v1/events, with the in-flight bound (http.max_in_flight_publishes) small, and, for
# comparison, without it. Prints per run the answers by status, the request rate and the
# peak RSS (VmRSS sampled every 100 ms). A release build of warren is expected at
# $BENCH_BIN (default: target/release/warren under $CARGO_TARGET_DIR or ./target).
#
#   scripts/bench-overload.sh [CONNECTIONS] [SECONDS] [IN_FLIGHT...]
#   defaults: 1000 connections, 30 s, in-flight bounds "64 0" (0: no bound)
#
# Needs RabbitMQ (scripts/services.sh rabbitmq) and wrk (scripts/services.sh install wrk).
# Uses a fresh vhost and a SQLite file, both removed afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

conns=${1:-1000}
secs=${2:-30}
shift $(($# > 2 ? 2 : $#))
bounds=("$@")
[ ${#bounds[@]} -gt 0 ] || bounds=(64 0)
bin=${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/warren}
[ -x "$bin" ] || { echo "bench-overload: no warren binary at $bin (cargo build --release)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "bench-overload: wrk not installed (scripts/services.sh install wrk)" >&2; exit 1; }
mgmt=${WARREN_TEST_MANAGEMENT_URL:-http://guest:guest@127.0.0.1:15672}
amqp=${WARREN_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672}
port=${BENCH_PORT:-18480}

work=$(mktemp -d)
vhost="warren-overload-$$"
serve_pid=
cleanup() {
  [ -z "$serve_pid" ] || kill "$serve_pid" 2>/dev/null || true
  curl -fsS -X DELETE "$mgmt/api/vhosts/$vhost" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
curl -fsS -X PUT -H 'content-type: application/json' -d '{}' "$mgmt/api/vhosts/$vhost" >/dev/null
curl -fsS -X PUT -H 'content-type: application/json' \
  -d '{"configure":".*","write":".*","read":".*"}' "$mgmt/api/permissions/$vhost/guest" >/dev/null

cat >"$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"user_id": "u-1", "email": "user1@example.com", "name": "Ada Lovelace", "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
  end
  local line = "statuses:"
  for k, v in pairs(total) do line = line .. string.format(" %s=%d", k, v) end
  io.write(line .. "\n")
  io.write(string.format("latency_p50_ms: %.1f p99_ms: %.1f\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
EOF

ulimit -n 65536 2>/dev/null || true
for bound in "${bounds[@]}"; do
  WARREN_AMQP__URL="$amqp/$vhost" \
    WARREN_DATABASE__URL="sqlite://$work/warren-$bound.db?mode=rwc" \
    WARREN_HTTP__ADDR="127.0.0.1:$port" \
    WARREN_HTTP__MAX_IN_FLIGHT_PUBLISHES="$bound" \
    WARREN_HTTP__SLOW_REQUEST_EVENTS_PER_SEC=0 \
    WARREN_METRICS__ADDR="127.0.0.1:$((port + 1))" \
    WARREN_LOG__FILTER=warn \
    "$bin" serve >"$work/serve-$bound.log" 2>&1 &
  serve_pid=$!
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/serve-$bound.log" >&2; exit 1; }
  idle=$(awk '/^VmRSS:/ {print $2}' "/proc/$serve_pid/status")
  peak=$idle
  wrk -t2 -c"$conns" -d"${secs}s" --timeout 30s -s "$work/post.lua" \
    "http://127.0.0.1:$port/v1/events/user.registered" >"$work/wrk-$bound.txt" 2>&1 &
  wrk_pid=$!
  while kill -0 "$wrk_pid" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$serve_pid/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -le "$peak" ] || peak=$rss
    sleep 0.1
  done
  wait "$wrk_pid" || true
  after=$(awk '/^VmRSS:/ {print $2}' "/proc/$serve_pid/status")
  refused=$(curl -fs "http://127.0.0.1:$port/metrics" | grep '^http_publish_refused_total' || true)
  echo "== in-flight bound ${bound} (0: none), ${conns} connections, ${secs} s"
  grep -E 'Requests/sec|statuses:|latency_p50|Socket errors|requests in' "$work/wrk-$bound.txt"
  echo "refused: ${refused:-none}"
  printf 'RSS: idle %.1f MiB, peak %.1f MiB, after %.1f MiB\n' \
    "$(echo "$idle / 1024" | bc -l)" "$(echo "$peak / 1024" | bc -l)" "$(echo "$after / 1024" | bc -l)"
  kill "$serve_pid" && wait "$serve_pid" 2>/dev/null || true
  serve_pid=
  # Let the queues drain into nothing between runs: purge what the run left.
  for q in $(curl -fs "$mgmt/api/queues/$vhost" | python3 -c 'import json,sys; [print(q["name"]) for q in json.load(sys.stdin)]'); do
    curl -fs -X DELETE "$mgmt/api/queues/$vhost/$q/contents" >/dev/null || true
  done
done
