#!/usr/bin/env bash
# The trip example in one command: RabbitMQ and PostgreSQL (scripts/services.sh all, when
# they are not already answering), the three Python participants (seats.py on 9101,
# payments.py on 9102, tickets.py on 9103), and `warren all` with examples/trip/warren.toml,
# in a vhost and a database of its own (warren-trip, warren_trip; both made afresh on each
# run, and the participants' ledgers too). It starts one trip, prints where to follow it (the
# console, with the token to sign in with) and how to start others; Ctrl-C stops everything.
#
# Environment: TRIP_PYTHON (python3), LOCAL_PROFILE (debug; `release` builds slower and runs
# faster), CARGO_TARGET_DIR (target), TRIP_STATE (target/trip: the ledgers and the token).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PYTHON=${TRIP_PYTHON:-python3}
PROFILE=${LOCAL_PROFILE:-debug}
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE
STATE=${TRIP_STATE:-target/trip}
API=http://127.0.0.1:8080
VHOST=warren-trip
DB=warren_trip

say() { printf 'trip: %s\n' "$*"; }
die() { printf 'trip: ERROR: %s\n' "$*" >&2; exit 1; }
# Answers when something listens on host:port ($1).
listening() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
rmq() { curl -fsS -m 10 -u guest:guest -H 'content-type: application/json' "$@"; }
pg() { PGPASSWORD=warren PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -U warren -d warren "$@"; }

command -v "$PYTHON" >/dev/null || die "no $PYTHON (set TRIP_PYTHON to a Python 3.11 or later)"
for addr in 127.0.0.1:8080 127.0.0.1:9101 127.0.0.1:9102 127.0.0.1:9103; do
  listening "$addr" && die "$addr is taken: stop what listens there first"
done

# The broker and the database: started (and installed) by scripts/services.sh unless both
# already answer.
if rmq -o /dev/null http://127.0.0.1:15672/api/overview 2>/dev/null && pg -tAc 'SELECT 1' >/dev/null 2>&1; then
  say "RabbitMQ and PostgreSQL already answer"
else
  scripts/services.sh all
fi
say "a fresh vhost $VHOST and database $DB"
rmq -o /dev/null -X DELETE "http://127.0.0.1:15672/api/vhosts/$VHOST" 2>/dev/null || true
rmq -o /dev/null -X PUT "http://127.0.0.1:15672/api/vhosts/$VHOST"
rmq -o /dev/null -X PUT "http://127.0.0.1:15672/api/permissions/$VHOST/guest" \
  -d '{"configure": ".*", "write": ".*", "read": ".*"}'
pg -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"

if [ "$PROFILE" = release ]; then
  cargo build --release -p warren --bin warren
else
  cargo build -p warren --bin warren
fi

rm -rf "$STATE" && mkdir -p "$STATE"
TOKEN=$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 || true)
[ ${#TOKEN} -eq 32 ] || die "cannot read /dev/urandom"
install -m 600 /dev/null "$STATE/token" && printf '%s\n' "$TOKEN" >"$STATE/token"

pids=()
stop() {
  trap - EXIT INT TERM
  say "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT
trap 'exit 130' INT TERM

for svc in seats:9101 payments:9102 tickets:9103; do
  "$PYTHON" "examples/trip/${svc%:*}.py" --port "${svc#*:}" --db "$STATE/${svc%:*}.db" &
  pids+=($!)
done

export WARREN_AMQP__URL="amqp://guest:guest@127.0.0.1:5672/$VHOST"
export WARREN_DATABASE__URL="postgres://warren:warren@127.0.0.1:5432/$DB"
export WARREN_HTTP__TOKENS="[{token=\"$TOKEN\", scopes=[\"publish\", \"admin\"], name=\"trip-demo\"}]"
"$BIN/warren" --config examples/trip/warren.toml all &
pids+=($!)

for _ in $(seq 1 300); do
  curl -fsS -m 2 -o /dev/null "$API/readyz" 2>/dev/null && break
  sleep 0.2
done
curl -fsS -m 2 -o /dev/null "$API/readyz" || die "warren did not become ready on $API"

# Starts a trip: $1 business key, $2 the trip (JSON). Prints the answer.
start_trip() {
  curl -sS -X POST "$API/v1/sagas/trip" -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d "{\"business_key\": \"$1\", \"payload\": $2}"
  echo
}
say "starting one trip:"
answer=$(start_trip "TRIP-$(date +%s)" \
  '{"passenger": "Ada Lovelace", "flight": "WR 19", "class": "economy", "card": "4242 4242 4242 4242", "fare": 420}')
echo "$answer"
saga=$(printf '%s' "$answer" | sed -n 's/.*"saga_id":"\([^"]*\)".*/\1/p')

cat <<EOF

trip: the console:  $API/console/#/sagas/$saga
trip:   sign in with the token $TOKEN (also in $STATE/token) and any name
trip: the saga:     curl -s -H 'authorization: Bearer $TOKEN' $API/v1/sagas/$saga
trip: the ledgers:  curl -s 127.0.0.1:9101/ledger  (seats; payments 9102, tickets 9103)
trip: more trips (examples/trip/README.md has them all):
trip:   sold out (409 at step 1):     "class": "first"
trip:   declined (422 at step 2):     "card": "4000 0000 0000 0002"
trip:   cancelled (409 at step 3):    "flight": "WR 404"
trip:   faults: curl -s 127.0.0.1:9102/faults -d '{"fail": 503, "times": 2}'
trip: RabbitMQ management UI: http://127.0.0.1:15672 (guest/guest, vhost $VHOST)
trip: Ctrl-C stops warren and the participants
EOF
wait "${pids[-1]}"
