#!/usr/bin/env bash
# Run the whole system locally. With a working Docker engine and compose: docker compose up.
# Otherwise: RabbitMQ from Debian's package (scripts/services.sh) and warren itself with
# cargo run, using its defaults (broker amqp://guest:guest@127.0.0.1:5672/%2f, SQLite file).
#
#   scripts/run-local.sh             run it (creates .env first when there is none)
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

have_compose_file() {
  local f
  for f in compose.yaml compose.yml docker-compose.yaml docker-compose.yml; do
    [ -f "$f" ] && return 0
  done
  return 1
}

if have_compose_file && docker compose version >/dev/null 2>&1 && timeout 15 docker info >/dev/null 2>&1; then
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

echo "run-local: no Docker engine; using the local RabbitMQ and cargo run"
scripts/services.sh rabbitmq
echo "run-local: RabbitMQ management UI: http://localhost:15672 (guest/guest)"
echo "run-local: warren API:             http://127.0.0.1:8080 (once built and started; Ctrl-C stops it)"
exec cargo run --release -- all
