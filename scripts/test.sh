#!/usr/bin/env bash
# The test command: start RabbitMQ and PostgreSQL (installing them if needed), then run every
# test in the workspace. Extra arguments go to cargo nextest (e.g. a filter). Exits non-zero
# when any test fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/services.sh all
# Debian packages the tests use: promtool (package prometheus) checks the metrics output.
command -v promtool >/dev/null 2>&1 || scripts/services.sh install prometheus

# Where the tests find the servers (an already-set value wins). Tests create their own vhosts
# and databases, hence no vhost or database name here.
export WARREN_TEST_AMQP_URL="${WARREN_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672}"
export WARREN_TEST_MANAGEMENT_URL="${WARREN_TEST_MANAGEMENT_URL:-http://guest:guest@127.0.0.1:15672}"
export WARREN_TEST_DATABASE_URL="${WARREN_TEST_DATABASE_URL:-postgres://warren:warren@127.0.0.1:5432}"

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --all-targets --no-fail-fast "$@"
fi
echo "test: cargo-nextest not installed, falling back to cargo test"
exec cargo test --workspace --no-fail-fast "$@"
