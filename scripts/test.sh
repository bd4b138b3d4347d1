#!/usr/bin/env bash
# The test command: start RabbitMQ and PostgreSQL (installing them if needed), then run every
# test in the workspace. Extra arguments go to cargo nextest (e.g. a filter). Exits non-zero
# when any test fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/services.sh all
# The chaos suite's own broker node and PostgreSQL cluster (tests/api/chaos.rs stops, kills and
# alarms them, so they are not the ones the other tests share).
scripts/chaos-services.sh all
# RabbitMQ 4.0 beside 3.10 (a Debian 13 root, built on the first run): the broker-facing
# tests run a second time against its nodes, below. Only for the whole suite (no arguments).
if [ $# -eq 0 ]; then
  scripts/rabbitmq4.sh all start
fi
# Debian packages the tests use: promtool (package prometheus) checks the metrics output.
command -v promtool >/dev/null 2>&1 || scripts/services.sh install prometheus
# The console's browser test (tests/api/console.rs): Debian's Chromium driven by playwright-core,
# installed from the lock file in tests/console (it never downloads a browser of its own).
command -v chromium >/dev/null 2>&1 || scripts/services.sh install chromium
command -v npm >/dev/null 2>&1 || scripts/services.sh install nodejs npm
[ -d tests/console/node_modules/playwright-core ] ||
  npm ci --prefix tests/console --no-audit --no-fund --loglevel=error
# The AsyncAPI document's check (tests/api/asyncapi.rs runs tests/asyncapi/check.mjs): the
# AsyncAPI parser and Ajv from npm, from the lock file in tests/asyncapi.
[ -d tests/asyncapi/node_modules/@asyncapi/parser ] && [ -d tests/asyncapi/node_modules/ajv-formats ] ||
  npm ci --prefix tests/asyncapi --no-audit --no-fund --loglevel=error
# The subscriptions' wire check (tests/wire/check_delivery.py, run by src/subscriptions/wire.rs):
# the CloudEvents SDK and the Standard Webhooks reference library from PyPI, pinned, in a venv
# of their own (target/pyenv, reused when it already has all three); and pika, the AMQP client
# the CloudEvents wire test (tests/api/cloudevents_wire.rs, tests/wire/amqp_cloudevent.py)
# reads and publishes the SDK's RabbitMQ binding with.
command -v python3 >/dev/null 2>&1 || scripts/services.sh install python3
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || scripts/services.sh install python3-venv
if ! target/pyenv/bin/python -c 'import cloudevents.core.bindings.http, cloudevents.core.bindings.rabbitmq, standardwebhooks, pika' >/dev/null 2>&1; then
  python3 -m venv target/pyenv
  target/pyenv/bin/pip install --quiet --disable-pip-version-check \
    'cloudevents==2.2.0' 'standardwebhooks==1.1.0' 'pika==1.3.2'
fi
# The OpenAPI check (tests/api/openapi.rs): schemathesis from PyPI, pinned, in its own venv
# (target/schemathesis, reused when it already has that version).
# Hypothesis pinned too: its newer releases describe strategies by parsing lambda sources with
# `ast` deep inside a draw, which on Debian 12's Python 3.11 intermittently fails with
# "AST constructor recursion depth mismatch" (a CPython bug), a runtime error of the tool.
if ! target/schemathesis/bin/schemathesis --version 2>/dev/null | grep -q ' 4\.32\.5$' ||
  ! target/schemathesis/bin/python -c 'import importlib.metadata as m, sys; sys.exit(m.version("hypothesis") != "6.135.0")' 2>/dev/null; then
  python3 -m venv target/schemathesis
  target/schemathesis/bin/pip install --quiet --disable-pip-version-check 'schemathesis==4.32.5' 'hypothesis==6.135.0'
fi

# Where the tests find the servers (an already-set value wins). Tests create their own vhosts
# and databases, hence no vhost or database name here.
export WARREN_TEST_AMQP_URL="${WARREN_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672}"
export WARREN_TEST_MANAGEMENT_URL="${WARREN_TEST_MANAGEMENT_URL:-http://guest:guest@127.0.0.1:15672}"
# The broker's Prometheus endpoint: exact queue figures for the tests' settled check.
export WARREN_TEST_PROMETHEUS_URL="${WARREN_TEST_PROMETHEUS_URL:-http://127.0.0.1:15692}"
export WARREN_TEST_DATABASE_URL="${WARREN_TEST_DATABASE_URL:-postgres://warren:warren@127.0.0.1:5432}"
# The broker's AMQPS listener and the test CA/certificates scripts/services.sh made for it.
export WARREN_TEST_AMQPS_URL="${WARREN_TEST_AMQPS_URL:-amqps://guest:guest@127.0.0.1:5671}"
export WARREN_TEST_TLS_DIR="${WARREN_TEST_TLS_DIR:-/etc/rabbitmq/tls}"
export WARREN_TEST_CHAOS_AMQP_URL="${WARREN_TEST_CHAOS_AMQP_URL:-amqp://guest:guest@127.0.0.1:5673}"
export WARREN_TEST_CHAOS_MANAGEMENT_URL="${WARREN_TEST_CHAOS_MANAGEMENT_URL:-http://guest:guest@127.0.0.1:15673}"
export WARREN_TEST_CHAOS_PROMETHEUS_URL="${WARREN_TEST_CHAOS_PROMETHEUS_URL:-http://127.0.0.1:15693}"
export WARREN_TEST_CHAOS_DATABASE_URL="${WARREN_TEST_CHAOS_DATABASE_URL:-postgres://warren:warren@127.0.0.1:5433}"
# The Python that runs the subscriptions' wire check (the venv above).
export WARREN_TEST_PYTHON="${WARREN_TEST_PYTHON:-$PWD/target/pyenv/bin/python}"
# The schemathesis that checks the OpenAPI document (the venv above).
export WARREN_TEST_SCHEMATHESIS="${WARREN_TEST_SCHEMATHESIS:-$PWD/target/schemathesis/bin/schemathesis}"

# The whole suite, then the tests of the optional `otlp` feature (a second build of the test
# binary with the feature on). Both run; the exit status is non-zero if either failed.
# The cluster suite (tests/api/cluster.rs) runs on its own afterwards, on the three-node
# cluster of scripts/cluster.sh: its load and node restarts would otherwise share the two cores
# with the timing-bound tests of the main run. (Picked by a filter, its tests start the cluster
# themselves.)
status=0
if cargo nextest --version >/dev/null 2>&1; then
  if [ $# -eq 0 ]; then
    cargo nextest run --workspace --all-targets --no-fail-fast -E 'not test(/^cluster::/)' || status=$?
    cargo nextest run -p warren --test api --features otlp --no-fail-fast -E 'test(/^otlp::/)' || status=$?
    scripts/cluster.sh up || status=$?
    cargo nextest run -p warren --test api --no-fail-fast -E 'test(/^cluster::/)' || status=$?
    scripts/cluster.sh down || true
  else
    cargo nextest run --workspace --all-targets --no-fail-fast "$@" || status=$?
  fi
else
  echo "test: cargo-nextest not installed, falling back to cargo test"
  if [ $# -eq 0 ]; then
    cargo test --workspace --no-fail-fast -- --skip cluster:: || status=$?
    cargo test -p warren --test api --features otlp --no-fail-fast otlp:: || status=$?
    scripts/cluster.sh up || status=$?
    cargo test -p warren --test api --no-fail-fast cluster:: -- --test-threads=1 || status=$?
    scripts/cluster.sh down || true
  else
    cargo test --workspace --no-fail-fast "$@" || status=$?
  fi
fi
# The broker-facing tests again, against RabbitMQ 4.0 (scripts/rabbitmq4.sh): rabbit4@localhost
# for all but the chaos suite, which kills, stops and alarms chaos4@localhost (with the same
# PostgreSQL chaos cluster as before: the chaos tests of the two runs never overlap).
# docs/architecture.md, "RabbitMQ 3.10 and 4.0", says what differs.
if [ $# -eq 0 ]; then
  rmq4_tests='(test(/^publish::/) | test(/^topology::/) | test(/^jobs::/) | test(/^reliability::/)'
  rmq4_tests+=' | test(/^dlq::/) | test(/^saga::/) | test(/^saga_http::/) | test(/^outbox::/)'
  rmq4_tests+=' | test(/^subscription/) | test(/^gate::/) | test(/^nodes::/) | test(/^chaos::/))'
  # Not broker behaviour: the console's browser test (Chromium) and the 60/120 s production
  # tier timings (minutes of waiting, the same TTL arithmetic on both versions).
  rmq4_tests+=' - test(/in_a_real_browser/) - test(/^reliability::production_tiers/)'
  rabbitmq4_env=(
    WARREN_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5690
    WARREN_TEST_MANAGEMENT_URL=http://guest:guest@127.0.0.1:15690
    WARREN_TEST_PROMETHEUS_URL=http://127.0.0.1:15790
    WARREN_TEST_AMQPS_URL=amqps://guest:guest@127.0.0.1:5692
    WARREN_TEST_CHAOS_AMQP_URL=amqp://guest:guest@127.0.0.1:5691
    WARREN_TEST_CHAOS_MANAGEMENT_URL=http://guest:guest@127.0.0.1:15691
    WARREN_TEST_CHAOS_PROMETHEUS_URL=http://127.0.0.1:15791
    "WARREN_TEST_CHAOS_NODE_CTL=$PWD/scripts/rabbitmq4.sh chaos4 ctl"
    "WARREN_TEST_CHAOS_PID_CMD=$PWD/scripts/rabbitmq4.sh chaos4 pid"
    "WARREN_TEST_CHAOS_RESTART=$PWD/scripts/rabbitmq4.sh chaos4 start"
  )
  echo "test: the broker-facing tests against RabbitMQ 4.0 (rabbit4@localhost, chaos4@localhost)"
  rmq4_start=$SECONDS
  if cargo nextest --version >/dev/null 2>&1; then
    env "${rabbitmq4_env[@]}" cargo nextest run -p warren --test api --no-fail-fast -E "$rmq4_tests" || status=$?
  else
    echo "test: cargo-nextest not installed: the RabbitMQ 4.0 run needs its filter, skipped" >&2
  fi
  echo "test: the RabbitMQ 4.0 run took $(((SECONDS - rmq4_start) / 60)) min $(((SECONDS - rmq4_start) % 60)) s"
fi
# The benchmark suite's smoke run (seconds; sanity of every figure, no absolute speeds).
if [ $# -eq 0 ]; then
  scripts/bench-suite.sh --smoke || status=$?
fi
exit "$status"
