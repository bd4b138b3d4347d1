#!/usr/bin/env bash
# The benchmark suite, one command:
#
#   scripts/bench-suite.sh            the whole suite (about 25 minutes on 2 cores after the
#                                     build); writes BENCHMARKS.md (between the bench:suite
#                                     markers), docs/bench/suite.svg and docs/bench/suite.json
#   scripts/bench-suite.sh --smoke    a run of seconds that checks every figure is sane (non-zero
#                                     throughput, no error answer, no message lost) and writes
#                                     nothing; CI runs it after the tests (debug build)
#
# It starts RabbitMQ and PostgreSQL (scripts/services.sh all; installs them if absent), installs
# wrk, psql and python3-venv when missing, builds warren and warren-bench (the workspace
# member bench/; release, --smoke: the debug build), then runs scripts/bench_suite.py, which
# starts and stops everything else itself: `warren serve`, the bare warp+lapin server and the
# SMTP receiver (`warren-bench ...`), and Celery in a
# virtualenv (target/bench-venv, `pip install celery`). What it measures and how:
# BENCHMARKS.md and the docstring of scripts/bench_suite.py. The last step, `subscriptions`
# (`warren-bench subscriptions`: HTTP subscription deliveries against a bare lapin+reqwest
# relay, issue 18), writes its own block of BENCHMARKS.md (the bench:subscriptions markers);
# `--only subscriptions` runs it alone (about 3 minutes) and leaves the suite's block alone.
# Step `sagas_and_scale` runs `warren-bench sagas` with the Rust participants and with HTTP
# participants (`--participants http`), BENCH_SAGA_ROUNDS pairs, then `warren-bench scale`;
# `--only sagas_and_scale` (about 5 minutes) rewrites the suite's block with the other steps'
# figures carried over from docs/bench/suite.json (the block says from which run).
# Step `headers` (`warren-bench header-cost`: RabbitMQ's CPU per message for the bare body,
# warren's envelope, and the envelope with its `ce-*` headers) writes the bench:headers block;
# `--only headers` runs it alone (about 2 minutes).
#
# Options: --smoke, --celery (with --smoke: run Celery too), --no-write, --only STEPS
# (http,raw_and_jobs,retry,celery,sagas_and_scale,subscriptions,headers), --no-build.
# Environment: CARGO_TARGET_DIR (default target), BENCH_SECONDS (15 s per wrk run),
# BENCH_CONCURRENCY ("100 500 1000"),
# BENCH_MESSAGES (100000), BENCH_CELERY_TASKS (20000), BENCH_RETRY_JOBS (2000),
# BENCH_ORDERS (2000), BENCH_SAGA_ROUNDS (2), BENCH_SUB_MESSAGES (20000), BENCH_SUB_LATENCY_MESSAGES (5000),
# BENCH_SUB_LATENCY_RATE (500), BENCH_HEADER_MESSAGES (20000), BENCH_AMQP_URL, BENCH_MANAGEMENT_URL, BENCH_DATABASE_URL.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SMOKE=0
BUILD=1
CELERY=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1; ARGS+=(--smoke) ;;
    --celery) CELERY=1; ARGS+=(--celery) ;;
    --no-build) BUILD=0 ;;
    *) ARGS+=("$arg") ;;
  esac
done

scripts/services.sh all
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if { [ "$SMOKE" = 0 ] || [ "$CELERY" = 1 ]; } && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
[ ${#missing[@]} -eq 0 ] || scripts/services.sh install "${missing[@]}"

TARGET=${CARGO_TARGET_DIR:-target}
if [ "$SMOKE" = 1 ]; then
  [ "$BUILD" = 0 ] || cargo build -p warren -p warren-bench --bins
  PROFILE=debug
else
  [ "$BUILD" = 0 ] || cargo build --release -p warren -p warren-bench --bins
  PROFILE=release
fi
BIN="$TARGET/$PROFILE/warren"
BENCH_BIN="$TARGET/$PROFILE/warren-bench"

COMMAND="scripts/bench-suite.sh${*:+ $*}"
exec python3 scripts/bench_suite.py --bin "$BIN" --bench-bin "$BENCH_BIN" --command "$COMMAND" "${ARGS[@]}"
