#!/usr/bin/env bash
# Run the whole system locally. With a working Docker engine and compose: docker compose up
# (Mailpit receives the e-mail: http://127.0.0.1:8025). Otherwise: RabbitMQ from Debian's
# package (scripts/services.sh), a local SMTP receiver (`warren-bench smtp-sink`, on
# 127.0.0.1:2525, writing each mail to target/local-mail/*.eml and a line per mail to the
# terminal) and `warren all`, both built with cargo (release), warren with its defaults
# (broker amqp://guest:guest@127.0.0.1:5672/%2f, SQLite file) but for the SMTP URL, which
# points at the receiver unless WARREN_EMAIL__SMTP_URL is set. Ctrl-C stops both.
#
# Environment: LOCAL_SMTP_ADDR (127.0.0.1:2525), LOCAL_MAILDIR (target/local-mail),
# LOCAL_PROFILE (release; `debug` builds faster and runs slower), CARGO_TARGET_DIR (target).
#
#   scripts/run-local.sh             run it (creates .env first when there is none)
#   scripts/run-local.sh --cluster   the same without Docker, on the three-node RabbitMQ cluster
#                                    of scripts/cluster.sh (AMQP 5681-5683) instead of the
#                                    one node: warren gets all three in amqp.urls and
#                                    amqp.management_urls
#   scripts/run-local.sh env [FILE]  only write FILE (default .env) from .env.example, every
#                                    empty password and token filled with a random value;
#                                    an existing FILE is left alone
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# 32 random letters and digits (fits in URLs and in TOML strings unquoted).
random_secret() {
  local s
  s=$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 || true)
  [ ${#s} -eq 32 ] || { echo "run-local: cannot read /dev/urandom" >&2; exit 1; }
  printf '%s' "$s"
}

# Writes $1 from .env.example: each empty `NAME=` line gets a random value.
make_env() {
  local dest=$1 tmp line
  if [ -e "$dest" ]; then
    echo "run-local: $dest exists, left as it is"
    return 0
  fi
  tmp=$(mktemp)
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ "$line" =~ ^[A-Z_][A-Z0-9_]*=$ ]]; then
      line="$line$(random_secret)"
    fi
    printf '%s\n' "$line"
  done <.env.example >"$tmp"
  install -m 600 "$tmp" "$dest"
  rm -f "$tmp"
  echo "run-local: wrote $dest with random passwords and API tokens (see the file)"
}

if [ "${1:-}" = env ]; then
  make_env "${2:-.env}"
  exit 0
fi
cluster=0
if [ "${1:-}" = --cluster ]; then
  cluster=1
fi

have_compose_file() {
  local f
  for f in compose.yaml compose.yml docker-compose.yaml docker-compose.yml; do
    [ -f "$f" ] && return 0
  done
  return 1
}

if [ "$cluster" = 0 ] && have_compose_file && docker compose version >/dev/null 2>&1 && timeout 15 docker info >/dev/null 2>&1; then
  echo "run-local: Docker engine found, starting the stack with docker compose"
  make_env .env
  docker compose up -d --build
  docker compose ps
  echo "run-local: warren API:             http://127.0.0.1:8080"
  echo "run-local: RabbitMQ management UI: http://127.0.0.1:15672 (user and password in .env)"
  echo "run-local: Grafana:                http://127.0.0.1:3000 (admin, password in .env)"
  echo "run-local: Prometheus:             http://127.0.0.1:9090; Mailpit: http://127.0.0.1:8025"
  echo "run-local: logs: docker compose logs -f; stop: docker compose down"
  exit 0
fi

echo "run-local: no Docker engine; using the local RabbitMQ, a local SMTP receiver and cargo"
scripts/services.sh rabbitmq
if [ "$cluster" = 1 ]; then
  scripts/cluster.sh up
  export WARREN_AMQP__URLS=amqp://guest:guest@127.0.0.1:5681/%2f,amqp://guest:guest@127.0.0.1:5682/%2f,amqp://guest:guest@127.0.0.1:5683/%2f
  export WARREN_AMQP__MANAGEMENT_URLS=http://guest:guest@127.0.0.1:15681,http://guest:guest@127.0.0.1:15682,http://guest:guest@127.0.0.1:15683
fi
PROFILE=${LOCAL_PROFILE:-release}
if [ "$PROFILE" = release ]; then
  cargo build --release -p warren -p warren-bench --bins
else
  cargo build -p warren -p warren-bench --bins
fi
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/$PROFILE
SMTP_ADDR=${LOCAL_SMTP_ADDR:-127.0.0.1:2525}
MAILDIR=${LOCAL_MAILDIR:-target/local-mail}

# Answers when something listens on host:port ($1).
listening() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

# The receiver in the background, stopped when this script exits (Ctrl-C included).
if listening "$SMTP_ADDR"; then
  echo "run-local: $SMTP_ADDR is taken: stop what listens there, or set LOCAL_SMTP_ADDR" >&2
  exit 1
fi
sink_pid=
stop_sink() {
  [ -n "$sink_pid" ] || return 0
  kill -TERM "$sink_pid" 2>/dev/null || true
  wait "$sink_pid" 2>/dev/null || true
}
trap stop_sink EXIT
"$BIN/warren-bench" smtp-sink --addr "$SMTP_ADDR" --maildir "$MAILDIR" --summary \
  > >(sed -u 's/^/smtp-sink: /') &
sink_pid=$!
for _ in $(seq 1 100); do
  listening "$SMTP_ADDR" && break
  sleep 0.1
done
listening "$SMTP_ADDR" || { echo "run-local: the SMTP receiver did not start on $SMTP_ADDR" >&2; exit 1; }
export WARREN_EMAIL__SMTP_URL=${WARREN_EMAIL__SMTP_URL:-smtp://$SMTP_ADDR}

if [ "$cluster" = 1 ]; then
  echo "run-local: RabbitMQ cluster:       management UI http://localhost:15681 (guest/guest), nodes c1-c3"
else
  echo "run-local: RabbitMQ management UI: http://localhost:15672 (guest/guest)"
fi
echo "run-local: e-mail:                 $MAILDIR/*.eml (one file per mail; a line here each)"
echo "run-local: warren API:             http://127.0.0.1:8080 (Ctrl-C stops it)"
"$BIN/warren" all
