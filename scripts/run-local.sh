#!/usr/bin/env bash
# Run the whole system locally. With a working Docker engine and compose: docker compose up.
# Otherwise: RabbitMQ from Debian's package (scripts/services.sh) and warren itself with
# cargo run, using its defaults (broker amqp://guest:guest@127.0.0.1:5672/%2f, SQLite file).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

have_compose_file() {
  local f
  for f in compose.yaml compose.yml docker-compose.yaml docker-compose.yml; do
    [ -f "$f" ] && return 0
  done
  return 1
}

if have_compose_file && docker compose version >/dev/null 2>&1 && timeout 15 docker info >/dev/null 2>&1; then
  echo "run-local: Docker engine found, starting the stack with docker compose"
  if [ ! -f .env ]; then
    # Local-only demo credentials (every port is bound to 127.0.0.1); edit .env to change.
    sed -e 's/^RABBITMQ_DEFAULT_PASS=.*/RABBITMQ_DEFAULT_PASS=warren-local/' \
        -e 's/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=warren-local/' \
        -e 's/^GRAFANA_ADMIN_PASSWORD=.*/GRAFANA_ADMIN_PASSWORD=warren-local/' .env.example > .env
    echo "run-local: created .env from .env.example (passwords: warren-local)"
  fi
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
