#!/usr/bin/env bash
# Publish benchmark: how many `POST /v1/events/user.registered` per second warren's HTTP front
# answers with 202 (broker-confirmed), at 100, 500 and 1000 concurrent connections.
#
#   scripts/bench.sh                        quorum queues (the default topology)
#   scripts/bench.sh --queue-type classic   the same topology with classic queues
#   scripts/bench.sh --queue-type both      both, one after the other (what BENCHMARKS.md shows)
#   scripts/bench.sh --tuning               publish_channels / pool_size variants at 500 connections
#   scripts/bench.sh --queue-type both --tuning   everything (about 40 minutes on a quiet machine)
#
# What it does: starts RabbitMQ (scripts/services.sh rabbitmq); builds warren in release
# (cargo build --release; CARGO_TARGET_DIR is honoured, default target/); creates a dedicated
# vhost (deleted first if it exists, deleted again at exit) with guest's permissions; starts
# `warren serve` on 127.0.0.1:8089 against it with a SQLite file in a temp dir; waits for
# /readyz and for every queue of the topology; warms up for a few seconds; then for each
# concurrency runs
#   wrk -t2 -cN -dS --latency --timeout 10s -s post.lua http://127.0.0.1:8089/v1/events/user.registered
# (a ~200-byte JSON body, content-type application/json; the script counts statuses), purging
# the queues before each run; and once `GET /healthz` at 100 connections (the HTTP ceiling, the
# reference measured in the same run). wrk's --timeout is raised from its 2 s default above
# warren's 5 s publish timeout so slow answers are measured, not dropped as socket timeouts.
#
# A run is "disturbed" when the 1-minute load average is above BENCH_MAX_LOAD at its start or
# processes other than wrk, warren and RabbitMQ (a cargo build...) used more than
# BENCH_MAX_FOREIGN_CPU cores during it. Before each run the script waits (up to
# BENCH_QUIET_TIMEOUT seconds) for a quiet machine; a disturbed run is repeated up to
# BENCH_RETRIES times. Load, foreign CPU and attempts are written next to each figure.
#
# Results go to BENCHMARKS.md (BENCH_OUTPUT), between the markers <!-- bench:publish:start -->
# and <!-- bench:publish:end -->; the rest of the file is kept. Each set (quorum, classic,
# tuning) is replaced only when it was run; the others stay as they were.
#
# Settings (environment):
#   BENCH_SECONDS (20)            length of each measured run
#   BENCH_REPEAT (3)              runs per row, in rounds (100, 500, 1000, 100, ...); the table
#                                 shows the median run and the req/s range
#   BENCH_WARMUP_SECONDS (5)      warm-up after each start of warren
#   BENCH_CONCURRENCY ("100 500 1000")
#   BENCH_HEALTHZ_CONNECTIONS (100)
#   BENCH_TUNE_CONNECTIONS (500)  concurrency of the --tuning runs
#   BENCH_TUNE_VARIANTS ("8:2 16:2 32:2 8:4 32:4")  publish_channels:pool_size, run in rounds
#   BENCH_PORT (8089), BENCH_VHOST (warren-bench), BENCH_OUTPUT (BENCHMARKS.md)
#   BENCH_MAX_LOAD (3), BENCH_MAX_FOREIGN_CPU (0.3), BENCH_QUIET_TIMEOUT (900), BENCH_RETRIES (2)
#   BENCH_KEEP_LOGS (0)           1: keep the temp dir (warren's log, wrk outputs) after success
#   BENCH_MGMT_URL (http://127.0.0.1:15672), BENCH_MGMT_USER/BENCH_MGMT_PASS (guest/guest)
#   WARREN_* variables pass through to warren (WARREN_AMQP__PUBLISH_CHANNELS, ...), except the
#   ones the benchmark sets: AMQP URL, HTTP address, database URL and topology file.
# Options:
#   --no-build      use the binary already built in $CARGO_TARGET_DIR/release
#   --rev REV       build git revision REV (e.g. HEAD) from a clean snapshot (git archive into
#                   $CARGO_TARGET_DIR/bench-src) instead of the working tree, and use its
#                   broker-topology.json: for when the working tree is mid-edit
#   --tuning-only   only the --tuning runs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

QUEUE_TYPES=(quorum)
TUNING=0
BUILD=1
REV=
while [ $# -gt 0 ]; do
  case "$1" in
    --queue-type)
      [ $# -ge 2 ] || usage
      case "$2" in
        quorum | classic) QUEUE_TYPES=("$2") ;;
        both) QUEUE_TYPES=(quorum classic) ;;
        *) usage ;;
      esac
      shift 2
      ;;
    --queue-type=*)
      case "${1#*=}" in
        quorum | classic) QUEUE_TYPES=("${1#*=}") ;;
        both) QUEUE_TYPES=(quorum classic) ;;
        *) usage ;;
      esac
      shift
      ;;
    --tuning) TUNING=1; shift ;;
    --tuning-only) TUNING=1; QUEUE_TYPES=(); shift ;;
    --no-build) BUILD=0; shift ;;
    --rev)
      [ $# -ge 2 ] || usage
      REV=$2
      shift 2
      ;;
    -h | --help) usage ;;
    *) usage ;;
  esac
done
COMMAND="scripts/bench.sh"
for v in $(compgen -e | grep -E '^(BENCH_|CARGO_TARGET_DIR$|WARREN_)' | sort); do
  COMMAND="$v=$(printf %q "${!v}") $COMMAND"
done
[ ${#QUEUE_TYPES[@]} -eq 0 ] || COMMAND+=" --queue-type $([ ${#QUEUE_TYPES[@]} -eq 2 ] && echo both || echo "${QUEUE_TYPES[0]}")"
[ "$TUNING" = 0 ] || COMMAND+=" --tuning"
[ "$BUILD" = 1 ] || COMMAND+=" --no-build"
[ -z "$REV" ] || COMMAND+=" --rev $REV"

SECONDS_PER_RUN=${BENCH_SECONDS:-20}
WARMUP=${BENCH_WARMUP_SECONDS:-5}
read -r -a CONCURRENCY <<<"${BENCH_CONCURRENCY:-100 500 1000}"
HEALTHZ_CONNECTIONS=${BENCH_HEALTHZ_CONNECTIONS:-100}
TUNE_CONNECTIONS=${BENCH_TUNE_CONNECTIONS:-500}
read -r -a TUNE_VARIANTS <<<"${BENCH_TUNE_VARIANTS:-8:2 16:2 32:2 8:4 32:4}"
REPEAT=${BENCH_REPEAT:-3}
PORT=${BENCH_PORT:-8089}
VHOST=${BENCH_VHOST:-warren-bench}
OUTPUT=${BENCH_OUTPUT:-BENCHMARKS.md}
MAX_LOAD=${BENCH_MAX_LOAD:-3}
MAX_FOREIGN=${BENCH_MAX_FOREIGN_CPU:-0.3}
QUIET_TIMEOUT=${BENCH_QUIET_TIMEOUT:-900}
RETRIES=${BENCH_RETRIES:-2}
MGMT=${BENCH_MGMT_URL:-http://127.0.0.1:15672}
MGMT_AUTH="${BENCH_MGMT_USER:-guest}:${BENCH_MGMT_PASS:-guest}"
WRK_TIMEOUT=10s
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release/warren
BASE=http://127.0.0.1:$PORT
HELPER=(python3 "$ROOT/scripts/bench_report.py")
case "$OUTPUT" in /*) ;; *) OUTPUT=$ROOT/$OUTPUT ;; esac

say() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: ERROR: %s\n' "$*" >&2; exit 1; }
for tool in curl wrk python3; do command -v "$tool" >/dev/null || die "$tool is not installed"; done

VHOST_ENC=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$VHOST")

# Management API: mgmt METHOD PATH [JSON body]; prints the response body.
mgmt() {
  local args=(-fsS -m 30 -u "$MGMT_AUTH" -X "$1")
  [ $# -lt 3 ] || args+=(-H 'content-type: application/json' -d "$3")
  curl "${args[@]}" "$MGMT$2"
}

# ---------------------------------------------------------------------------------------------
# Set-up

scripts/services.sh rabbitmq
SRC=$ROOT
if [ -n "$REV" ]; then
  # A clean tree of REV at a stable path (unchanged files keep their mtimes: no rebuild).
  REV_HASH=$(git rev-parse --verify "$REV^{commit}") || die "unknown git revision $REV"
  SRC=$(realpath -m "$TARGET_DIR/bench-src")
  if [ "$(cat "$SRC/.bench-rev" 2>/dev/null)" != "$REV_HASH" ]; then
    rm -rf "$SRC"
    mkdir -p "$SRC"
    git archive "$REV_HASH" | tar -x -C "$SRC"
    echo "$REV_HASH" >"$SRC/.bench-rev"
  fi
fi
if [ "$BUILD" = 1 ]; then
  say "building warren (release, from $SRC, target dir $TARGET_DIR)"
  CARGO_TARGET_DIR=$(realpath -m "$TARGET_DIR") cargo build --release --bin warren --manifest-path "$SRC/Cargo.toml"
fi
[ -x "$BIN" ] || die "no binary at $BIN (build it, or drop --no-build)"
if curl -s -m 2 -o /dev/null "$BASE/healthz"; then
  die "something already answers on $BASE: stop it or set BENCH_PORT"
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d /tmp/warren-bench.XXXXXX)
LOG=$WORK/warren.log
warren_pid=
vhost_created=0
ok=0

stop_warren() {
  [ -n "$warren_pid" ] || return 0
  if kill -0 "$warren_pid" 2>/dev/null; then
    kill -TERM "$warren_pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
      kill -0 "$warren_pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$warren_pid" 2>/dev/null; then
      say "warren did not stop within 15 s after SIGTERM; killing it"
      kill -KILL "$warren_pid" 2>/dev/null || true
    fi
  fi
  wait "$warren_pid" 2>/dev/null || true
  warren_pid=
}

cleanup() {
  local rc=$?
  stop_warren
  if [ "$vhost_created" = 1 ]; then
    delete_vhost 180 || say "could not delete vhost $VHOST (delete it with: curl -u guest:guest -X DELETE $MGMT/api/vhosts/$VHOST_ENC)"
  fi
  if [ "$ok" = 1 ] && [ "${BENCH_KEEP_LOGS:-0}" != 1 ]; then
    rm -rf "$WORK"
  else
    say "logs and raw wrk output kept in $WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Deletes the vhost and waits until it is gone (a delete can stall while the broker is busy
# with other vhosts; a leftover vhost would keep queues of the other type: 406 on declare).
delete_vhost() {
  local deadline=$((SECONDS + ${1:-300}))
  while :; do
    case "$(curl -s -m 10 -o /dev/null -w '%{http_code}' -u "$MGMT_AUTH" "$MGMT/api/vhosts/$VHOST_ENC")" in
      404) return 0 ;;
      200) curl -s -m 120 -o /dev/null -u "$MGMT_AUTH" -X DELETE "$MGMT/api/vhosts/$VHOST_ENC" || true ;;
      *) sleep 2 ;;
    esac
    [ $SECONDS -lt $deadline ] || return 1
  done
}

reset_vhost() {
  delete_vhost 300 || die "vhost $VHOST could not be deleted within 300 s"
  mgmt PUT "/api/vhosts/$VHOST_ENC" '{}' >/dev/null
  vhost_created=1
  mgmt PUT "/api/permissions/$VHOST_ENC/${MGMT_AUTH%%:*}" \
    '{"configure": ".*", "write": ".*", "read": ".*"}' >/dev/null
}

# start_warren CHANNELS POOL TOPOLOGY_FILE: starts warren, waits for /readyz and the queues.
start_warren() {
  local channels=$1 pool=$2 topology=$3 deadline q missing
  say "starting warren serve (publish_channels=$channels, pool_size=$pool, topology $(basename "$topology"))"
  echo "==== start publish_channels=$channels pool_size=$pool topology=$topology" >>"$LOG"
  WARREN_AMQP__URL="amqp://guest:guest@127.0.0.1:5672/$VHOST_ENC" \
    WARREN_HTTP__ADDR="127.0.0.1:$PORT" \
    WARREN_DATABASE__URL="sqlite://$WORK/warren.db?mode=rwc" \
    WARREN_AMQP__PUBLISH_CHANNELS="$channels" \
    WARREN_AMQP__POOL_SIZE="$pool" \
    WARREN_AMQP__TOPOLOGY_FILE="$topology" \
    "$BIN" serve >>"$LOG" 2>&1 &
  warren_pid=$!
  deadline=$((SECONDS + 60))
  until curl -fs -m 5 -o /dev/null "$BASE/readyz"; do
    kill -0 "$warren_pid" 2>/dev/null || { tail -n 30 "$LOG" >&2; die "warren exited during start-up"; }
    [ $SECONDS -lt $deadline ] || { tail -n 30 "$LOG" >&2; die "warren not ready within 60 s"; }
    sleep 0.5
  done
  # /readyz checks the broker connection, not the topology, which warren declares in the
  # background: wait until every queue exists, or the first publishes come back unroutable.
  while :; do
    missing=0
    existing=$(mgmt GET "/api/queues/$VHOST_ENC?columns=name" | python3 -c \
      'import json, sys; print("\n".join(q["name"] for q in json.load(sys.stdin)))')
    while read -r q; do
      grep -qxF "$q" <<<"$existing" || missing=$((missing + 1))
    done < <("${HELPER[@]}" queues "$topology")
    [ "$missing" -gt 0 ] || break
    [ $SECONDS -lt $deadline ] || { tail -n 30 "$LOG" >&2; die "topology not declared within 60 s ($missing queues missing)"; }
    sleep 1
  done
}

purge_queues() {
  local q
  while read -r q; do
    mgmt DELETE "/api/queues/$VHOST_ENC/$q/contents" >/dev/null || say "purge of $q failed"
  done < <("${HELPER[@]}" queues "$1")
}

# Connections and channels warren holds in the vhost (JSON).
broker_info() {
  mgmt GET "/api/vhosts/$VHOST_ENC/connections?columns=name,channels" | python3 -c '
import json, sys
c = json.load(sys.stdin)
n = sorted((x.get("channels", 0) for x in c), reverse=True)
print(json.dumps({"connections": len(c), "channels": sum(n), "per_connection": "+".join(map(str, n))}))'
}

# Depth of the two queues user.registered lands in (JSON): exact, from rabbitmqctl (the
# management API's counters lag by up to 5 s); the management API when rabbitmqctl fails.
queue_depth() {
  local out
  sleep 1 # let the confirms of requests still in flight when wrk stopped arrive
  if out=$(timeout 60 rabbitmqctl -q list_queues -p "$VHOST" name messages --no-table-headers 2>/dev/null |
    python3 -c '
import json, sys
d = dict(line.split()[:2] for line in sys.stdin if len(line.split()) >= 2)
print(json.dumps({q: int(d[q]) for q in ("warren.audit", "warren.notifications")}))'); then
    echo "$out"
  else
    queue_depth_mgmt
  fi
}

queue_depth_mgmt() {
  local prev='' cur i
  for i in $(seq 1 12); do
    cur=$(for q in warren.audit warren.notifications; do
      mgmt GET "/api/queues/$VHOST_ENC/$q?columns=messages" | python3 -c \
        'import json, sys; print(json.load(sys.stdin).get("messages", 0))'
    done | paste -sd ' ')
    if [ "$i" -gt 3 ] && [ "$cur" = "$prev" ]; then break; fi
    prev=$cur
    sleep 2
  done
  local audit notif
  read -r audit notif <<<"$cur"
  printf '{"warren.audit": %s, "warren.notifications": %s}\n' "${audit:-0}" "${notif:-0}"
}

# Waits until the load is at most MAX_LOAD and no foreign process uses CPU (bounded).
wait_quiet() {
  local deadline=$((SECONDS + QUIET_TIMEOUT)) said=0 load foreign
  while :; do
    "${HELPER[@]}" cpu-snap --tree $$ "$warren_pid" >"$WORK/q0.json"
    sleep 3
    "${HELPER[@]}" cpu-snap --tree $$ "$warren_pid" >"$WORK/q1.json"
    foreign=$("${HELPER[@]}" foreign "$WORK/q0.json" "$WORK/q1.json")
    load=$(cut -d' ' -f1 /proc/loadavg)
    if python3 -c 'import sys; a = list(map(float, sys.argv[1:])); sys.exit(0 if a[0] <= a[1] and a[2] <= a[3] else 1)' \
      "$load" "$MAX_LOAD" "$foreign" "$MAX_FOREIGN"; then
      return 0
    fi
    if [ $SECONDS -ge $deadline ]; then
      say "machine still busy after ${QUIET_TIMEOUT}s (load $load, foreign CPU $foreign cores); running anyway"
      return 0
    fi
    if [ $((said % 10)) = 0 ]; then say "waiting for a quiet machine (load $load, foreign CPU $foreign cores)"; fi
    said=$((said + 1))
  done
}

# The event body: about 200 bytes of JSON (no single quotes: it goes into a Lua string).
BODY='{"user_id":"3f0c9a52-7d1e-4b8a-9c61-2a5e8d7f4b10","email":"bench.user@example.com","name":"Bench User","plan":"pro","locale":"en-GB","source":"wrk","referrer":"https://example.com/signup?c=bench","opt_in":false}'

write_lua() {
  local f
  {
    echo '-- POST a JSON event; count responses by status (printed as STATUS lines at the end).'
    echo 'wrk.method = "POST"'
    echo 'wrk.headers["Content-Type"] = "application/json"'
    printf "wrk.body = '%s'\n" "$BODY"
  } >"$WORK/post.lua"
  {
    echo '-- GET; count responses by status (printed as STATUS lines at the end).'
    echo 'wrk.method = "GET"'
  } >"$WORK/get.lua"
  for f in "$WORK/post.lua" "$WORK/get.lua"; do
    cat >>"$f" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do total[code] = (total[code] or 0) + n end
  end
  for code, n in pairs(total) do io.write(string.format("STATUS %d %d\n", code, n)) end
end
LUA
  done
}

PUBLISH_URL=$BASE/v1/events/user.registered
# wrk_args CONNECTIONS SECONDS LUA URL: sets WRK_ARGS to the wrk command line.
wrk_args() {
  WRK_ARGS=(wrk -t2 "-c$1" "-d$2s" --latency --timeout "$WRK_TIMEOUT" -s "$3" "$4")
}

# measure SET QUEUE_TYPE CHANNELS POOL ROUTE CONNECTIONS TOPOLOGY REPEAT
measure() {
  local set=$1 qt=$2 ch=$3 pool=$4 route=$5 conns=$6 topology=$7 repeat=$8
  local attempt=1 rc tag lua url key load offset depth=() broker sampler
  if [ "$route" = publish ]; then
    lua=$WORK/post.lua url=$PUBLISH_URL key=published:confirmed
  else
    lua=$WORK/get.lua url=$BASE/healthz key="http:GET /healthz 200"
  fi
  while :; do
    tag="$set-$qt-$ch-$pool-$route-$conns-$repeat-$attempt"
    wait_quiet
    [ "$route" != publish ] || purge_queues "$topology"
    sleep 1
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    offset=$(stat -c %s "$LOG")
    "${HELPER[@]}" metrics "$BASE/metrics" >"$WORK/m0-$tag.json"
    "${HELPER[@]}" cpu-snap --tree $$ "$warren_pid" >"$WORK/c0-$tag.json"
    say "run: $route, $conns connections, ${SECONDS_PER_RUN}s ($qt, channels $ch, pool $pool, run $((repeat + 1)), attempt $attempt, load $load)"
    # Warren's counter once a second: the slowest second shows stalls that averages hide.
    "${HELPER[@]}" sample "$BASE/metrics" "$key" "$((SECONDS_PER_RUN + 1))" "$WORK/s-$tag.json" &
    sampler=$!
    wrk_args "$conns" "$SECONDS_PER_RUN" "$lua" "$url"
    "${WRK_ARGS[@]}" >"$WORK/wrk-$tag.txt" 2>&1 ||
      { cat "$WORK/wrk-$tag.txt" >&2; die "wrk failed"; }
    "${HELPER[@]}" cpu-snap --tree $$ "$warren_pid" >"$WORK/c1-$tag.json"
    wait "$sampler" || true
    depth=()
    # Waiting for the queue counters to settle also lets late confirms land before the scrape.
    [ "$route" != publish ] || depth=(--depth "$(queue_depth)")
    "${HELPER[@]}" metrics "$BASE/metrics" >"$WORK/m1-$tag.json"
    broker=$(broker_info)
    kill -0 "$warren_pid" 2>/dev/null || { tail -n 30 "$LOG" >&2; die "warren died during the run"; }
    rc=0
    "${HELPER[@]}" record --set "$set" --queue-type "$qt" --channels "$ch" --pool "$pool" \
      --route "$route" --concurrency "$conns" --attempt "$attempt" --repeat "$repeat" \
      --wrk-out "$WORK/wrk-$tag.txt" --cpu-before "$WORK/c0-$tag.json" --cpu-after "$WORK/c1-$tag.json" \
      --metrics-before "$WORK/m0-$tag.json" --metrics-after "$WORK/m1-$tag.json" \
      --load-start "$load" --log "$LOG" --log-offset "$offset" --broker "$broker" "${depth[@]}" \
      --series "$WORK/s-$tag.json" \
      --max-load "$MAX_LOAD" --max-foreign "$MAX_FOREIGN" --results "$WORK/results-$set.jsonl" || rc=$?
    [ "$rc" = 0 ] || [ "$rc" = 3 ] || die "could not record the run"
    if [ "$rc" = 3 ] && [ "$attempt" -le "$RETRIES" ]; then
      say "run disturbed; repeating it once the machine is quiet"
      attempt=$((attempt + 1))
      continue
    fi
    return 0
  done
}

warm_up() {
  say "warm-up: ${WARMUP}s at ${CONCURRENCY[0]} connections"
  wrk_args "${CONCURRENCY[0]}" "$WARMUP" "$WORK/post.lua" "$PUBLISH_URL"
  "${WRK_ARGS[@]}" >"$WORK/warmup.txt" 2>&1 ||
    { cat "$WORK/warmup.txt" >&2; die "wrk failed during warm-up"; }
  grep -E 'Requests/sec|Non-2xx' "$WORK/warmup.txt" | sed 's/^/bench: warm-up: /' >&2 || true
}

# The effective publish_channels and pool_size warren will use (WARREN_* may override them).
effective() { # effective KEY (a key of the [amqp] settings)
  "$BIN" config 2>/dev/null | python3 -c '
import json, re, sys
text, key = sys.stdin.read(), sys.argv[1]
try:
    print(json.loads(text)["amqp"][key])
except (ValueError, KeyError):
    m = re.search(r"^" + key + r" = (\d+)$", text, re.M)
    print(m.group(1) if m else "")' "$1"
}

finish_set() { # finish_set SET: render it into the output file
  cat "$WORK/results-$1.jsonl" >>"$WORK/results.jsonl"
  "${HELPER[@]}" render --results "$WORK/results.jsonl" --meta "$WORK/meta.json" --file "$OUTPUT"
  say "wrote the $1 results to $OUTPUT"
}

# ---------------------------------------------------------------------------------------------
# Run

write_lua
CHANNELS=$(effective publish_channels)
POOL=$(effective pool_size)
{ [ -n "$CHANNELS" ] && [ -n "$POOL" ]; } || die "cannot read publish_channels/pool_size from '$BIN config'"

if [ -n "$REV" ]; then
  commit="$(git rev-parse --short "$REV_HASH") (clean snapshot, --rev $REV)"
else
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  dirty=$(git status --porcelain 2>/dev/null | wc -l)
  [ "$dirty" = 0 ] || commit="$commit + $dirty uncommitted/untracked paths in the working tree"
fi
rmq=$(mgmt GET /api/overview | python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["rabbitmq_version"], d["erlang_version"])')
"${HELPER[@]}" meta \
  "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
  "commit=$commit" \
  "nproc=$(nproc)" \
  "cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
  "memory=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" \
  "kernel=Linux $(uname -r)" \
  "rabbitmq=${rmq% *}" "erlang=${rmq#* }" \
  "rustc=$(rustc --version)" \
  "wrk=$(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)" \
  "command=$COMMAND" \
  "wrk_cmd=$(wrk_args N "$SECONDS_PER_RUN" post.lua "$PUBLISH_URL"; echo "${WRK_ARGS[*]}")" \
  "seconds=$SECONDS_PER_RUN" "warmup=$WARMUP" "body_bytes=${#BODY}" "vhost=$VHOST" "repeat=$REPEAT" \
  "settings=publish_channels=$CHANNELS, pool_size=$POOL, publish_timeout_ms=$(effective publish_timeout_ms)" \
  "loadavg=$(cut -d' ' -f1-3 /proc/loadavg)" >"$WORK/meta.json"

for qt in "${QUEUE_TYPES[@]}"; do
  say "==== $qt queues"
  topology=$WORK/topology-$qt.json
  "${HELPER[@]}" topology "$qt" "$SRC/broker-topology.json" "$topology"
  reset_vhost
  start_warren "$CHANNELS" "$POOL" "$topology"
  warm_up
  for ((r = 0; r < REPEAT; r++)); do
    for c in "${CONCURRENCY[@]}"; do
      measure "$qt" "$qt" "$CHANNELS" "$POOL" publish "$c" "$topology" "$r"
    done
  done
  measure "$qt" "$qt" "$CHANNELS" "$POOL" healthz "$HEALTHZ_CONNECTIONS" "$topology" 0
  stop_warren
  finish_set "$qt"
done

if [ "$TUNING" = 1 ]; then
  qt=${QUEUE_TYPES[0]:-quorum}
  say "==== tuning at $TUNE_CONNECTIONS connections ($qt queues)"
  topology=$WORK/topology-$qt.json
  "${HELPER[@]}" topology "$qt" "$SRC/broker-topology.json" "$topology"
  for ((r = 0; r < REPEAT; r++)); do
    for v in "${TUNE_VARIANTS[@]}"; do
      reset_vhost
      start_warren "${v%%:*}" "${v##*:}" "$topology"
      warm_up
      measure tuning "$qt" "${v%%:*}" "${v##*:}" publish "$TUNE_CONNECTIONS" "$topology" "$r"
      stop_warren
    done
  done
  finish_set tuning
fi

ok=1
say "done: see $OUTPUT"
