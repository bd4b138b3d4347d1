#!/usr/bin/env bash
# The chaos suite's own broker and database, beside the ones scripts/services.sh starts, so
# that stopping, killing or alarming them hurts no other test:
#   - RabbitMQ node chaos@localhost: AMQP 127.0.0.1:5673, management 127.0.0.1:15673,
#     Prometheus 127.0.0.1:15693 (quorum queues report every 500 ms, as on the main node);
#   - PostgreSQL cluster 15/chaos: 127.0.0.1:5433 (role warren/warren, database warren).
#
#   scripts/chaos-services.sh [all|rabbitmq|postgres]
#
# Needs the packages and the Erlang cookie that scripts/services.sh installs (run it first).
# Idempotent: starts what is down, leaves what runs. Tests call `rabbitmq` to bring the node
# back after killing it.
set -euo pipefail

PG_VERSION=15
NODE=chaos@localhost
ETC=/etc/rabbitmq-chaos
START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-120}

say() { printf 'chaos-services: %s\n' "$*"; }
die() { printf 'chaos-services: ERROR: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
what=${1:-all}

# rabbitmqctl and friends for the chaos node, as the rabbitmq user (its cookie).
rmq() {
  local tool=$1
  shift
  (cd /var/lib/rabbitmq && runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq \
    RABBITMQ_CONF_ENV_FILE=$ETC/rabbitmq-env.conf "/usr/lib/rabbitmq/bin/$tool" "$@")
}

rabbitmq() {
  install -d -o rabbitmq -g rabbitmq -m 755 $ETC $ETC/conf.d /var/lib/rabbitmq-chaos /var/log/rabbitmq-chaos
  cat >$ETC/rabbitmq-env.conf <<'EOF'
# Written by warren's scripts/chaos-services.sh: the chaos suite's own node.
NODENAME=chaos@localhost
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=5673
DIST_PORT=25673
ERL_EPMD_ADDRESS=127.0.0.1
MNESIA_BASE=/var/lib/rabbitmq-chaos/mnesia
LOG_BASE=/var/log/rabbitmq-chaos
CONFIG_FILE=/etc/rabbitmq-chaos/rabbitmq.conf
ADVANCED_CONFIG_FILE=/etc/rabbitmq-chaos/advanced.config
# Its own conf.d (empty): not /etc/rabbitmq/conf.d, whose AMQPS listener (127.0.0.1:5671,
# written by services.sh) belongs to the main node.
CONFIG_FILES=/etc/rabbitmq-chaos/conf.d
ENABLED_PLUGINS_FILE=/etc/rabbitmq-chaos/enabled_plugins
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
  cat >$ETC/rabbitmq.conf <<'EOF'
# Written by warren's scripts/chaos-services.sh. Loopback only; limits as in services.sh.
listeners.tcp.1 = 127.0.0.1:5673
management.tcp.ip = 127.0.0.1
management.tcp.port = 15673
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = 15693
loopback_users.guest = true
vm_memory_high_watermark.relative = 0.6
disk_free_limit.absolute = 256MB
EOF
  # Quorum queues report their figures every 500 ms (default 5 s): the tests' settled check
  # reads them (see scripts/services.sh).
  echo '[{rabbit, [{quorum_tick_interval, 500}]}].' >$ETC/advanced.config
  echo '[rabbitmq_management,rabbitmq_prometheus].' >$ETC/enabled_plugins
  chown rabbitmq:rabbitmq $ETC/*
  if curl -fsS -m 5 -o /dev/null -u guest:guest http://127.0.0.1:15673/api/overview 2>/dev/null; then
    say "rabbitmq: $NODE already running"
    return 0
  fi
  if ! rmq rabbitmq-diagnostics -q -n $NODE ping >/dev/null 2>&1; then
    rm -f /var/lib/rabbitmq-chaos/mnesia/$NODE.pid
    say "rabbitmq: starting $NODE"
    rmq rabbitmq-server -detached >/dev/null 2>&1 || die "rabbitmq-server -detached failed for $NODE"
  fi
  local deadline=$((SECONDS + START_TIMEOUT))
  until rmq rabbitmqctl -q -n $NODE await_startup --timeout 30 >/dev/null 2>&1 &&
    curl -fsS -m 5 -o /dev/null -u guest:guest http://127.0.0.1:15673/api/overview 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || {
      tail -n 30 /var/log/rabbitmq-chaos/$NODE.log >&2 || true
      die "$NODE did not start within ${START_TIMEOUT}s"
    }
    sleep 1
  done
  say "rabbitmq: $NODE running (amqp 5673, management 15673, prometheus 15693)"
}

postgres() {
  if [ ! -f /etc/postgresql/$PG_VERSION/chaos/postgresql.conf ]; then
    say "postgres: creating cluster $PG_VERSION/chaos"
    pg_createcluster --locale=C.UTF-8 $PG_VERSION chaos -p 5433 >/dev/null ||
      die "pg_createcluster $PG_VERSION chaos failed"
  fi
  printf "listen_addresses = '127.0.0.1'\nport = 5433\n" >/etc/postgresql/$PG_VERSION/chaos/conf.d/warren.conf
  chown -R postgres:postgres /etc/postgresql/$PG_VERSION/chaos/conf.d
  install -d -o postgres -g postgres -m 2775 /var/run/postgresql
  pg_ctlcluster $PG_VERSION chaos status >/dev/null 2>&1 || pg_ctlcluster $PG_VERSION chaos start ||
    die "pg_ctlcluster $PG_VERSION chaos start failed"
  local deadline=$((SECONDS + 60))
  until pg_isready -q -h 127.0.0.1 -p 5433 -t 2; do
    [ $SECONDS -lt $deadline ] || die "postgres chaos cluster not accepting connections"
    sleep 1
  done
  runuser -u postgres -- psql -X -q -p 5433 -v ON_ERROR_STOP=1 -d postgres <<'EOF' >/dev/null
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'warren') THEN
    CREATE ROLE warren LOGIN CREATEDB PASSWORD 'warren';
  END IF;
END
$$;
EOF
  if [ "$(runuser -u postgres -- psql -X -p 5433 -tAc "SELECT 1 FROM pg_database WHERE datname = 'warren'")" != 1 ]; then
    runuser -u postgres -- psql -X -q -p 5433 -c 'CREATE DATABASE warren OWNER warren' >/dev/null
  fi
  say "postgres: cluster $PG_VERSION/chaos running on 127.0.0.1:5433"
}

case "$what" in
  all) rabbitmq; postgres ;;
  rabbitmq) rabbitmq ;;
  postgres) postgres ;;
  *) die "usage: $0 [all|rabbitmq|postgres]" ;;
esac
