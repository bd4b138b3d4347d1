#!/usr/bin/env bash
# Install (when absent) and start the servers warren needs, bound to 127.0.0.1 only.
#
#   scripts/services.sh rabbitmq | postgres | all
#   scripts/services.sh install PACKAGE...   (Debian packages only, e.g. prometheus for
#                                             promtool; their daemons are not started)
#
# Made for Debian 12 as root with no systemd (CI, dev machines): installs Debian's packages
# with apt-get, writes the config, starts the daemons itself and waits until they answer.
# Idempotent: a second run with everything up only checks and prints (a second or two).
# Fails with a non-zero exit and the reason when something cannot start.
#
# Timeouts (seconds) can be raised from the environment:
#   RABBITMQ_START_TIMEOUT (default 180), POSTGRES_START_TIMEOUT (default 60)
set -euo pipefail

PG_VERSION=15
PG_CLUSTER=main
RABBITMQ_NODE=rabbit@localhost
rmq_start_log= # temp file holding rabbitmq-server -detached output; also marks the start time
RABBITMQ_START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-180}
POSTGRES_START_TIMEOUT=${POSTGRES_START_TIMEOUT:-60}
APT_STAMP=/tmp/warren-apt-updated # apt-get update at most once an hour, across runs

say() { printf 'services: %s\n' "$*"; }
die() { printf 'services: ERROR: %s\n' "$*" >&2; exit 1; }

usage() { echo "usage: $0 rabbitmq|postgres|all  or  $0 install PACKAGE..." >&2; exit 2; }
[ $# -ge 1 ] || usage
[ "$1" = install ] || [ $# -eq 1 ] || usage
case "$1" in
  install) [ $# -ge 2 ] || usage; want_rmq=0 want_pg=0 ;;
  rabbitmq) want_rmq=1 want_pg=0 ;;
  postgres | postgresql) want_rmq=0 want_pg=1 ;;
  all) want_rmq=1 want_pg=1 ;;
  *) usage ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root (installs packages, writes /etc, starts daemons)"

# ---------------------------------------------------------------------------------------------
# Packages

is_installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == *" installed" ]]; }

apt_install() {
  local missing=() p rc=0 added_policy=0
  for p in "$@"; do is_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -gt 0 ] || return 0
  say "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$(find "$APT_STAMP" -mmin -60 2>/dev/null)" ]; then
    apt-get update -qq || die "apt-get update failed"
    touch "$APT_STAMP"
  fi
  # Keep the packages' maintainer scripts from starting daemons (invoke-rc.d): we start them
  # ourselves below, after writing the 127.0.0.1-only config.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  # LANG=C.UTF-8: the cluster that postgresql's postinst creates gets UTF8 encoding, not SQL_ASCII.
  LANG=C.UTF-8 LC_ALL=C.UTF-8 apt-get install -y -qq --no-install-recommends "${missing[@]}" || {
    # Stale package lists (404 on download): refresh once and retry.
    apt-get update -qq && touch "$APT_STAMP" &&
      LANG=C.UTF-8 LC_ALL=C.UTF-8 apt-get install -y -qq --no-install-recommends "${missing[@]}"
  } || rc=$?
  [ "$added_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || die "apt-get install ${missing[*]} failed"
}

# Write file $1 from stdin, only when its content differs; then set CHANGED=1.
CHANGED=0
write_if_changed() {
  local dest=$1 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then
    rm -f "$tmp"
    return 0
  fi
  install -D -m 644 "$tmp" "$dest" || die "cannot write $dest"
  rm -f "$tmp"
  say "wrote $dest"
  CHANGED=1
}

if [ "$1" = install ]; then
  shift
  apt_install "$@"
  exit 0
fi

packages=(curl)
# openssl makes the test TLS certificates; ca-certificates: warren's AMQPS client (lapin with
# rustls-native-certs) loads the system roots even when given a CA file, and fails without any.
[ "$want_rmq" = 0 ] || packages+=(rabbitmq-server openssl ca-certificates)
[ "$want_pg" = 0 ] || packages+=(postgresql "postgresql-$PG_VERSION" "postgresql-client-$PG_VERSION")
apt_install "${packages[@]}"

# ---------------------------------------------------------------------------------------------
# RabbitMQ

rmq_api_ok() { curl -fsS -m 5 -o /dev/null -u guest:guest http://127.0.0.1:15672/api/overview 2>/dev/null; }
# /usr/sbin/rabbitmq* are Debian's wrappers: run as root they switch to the rabbitmq user (so the
# CLI uses /var/lib/rabbitmq/.erlang.cookie, the server's cookie) and cd to /var/lib/rabbitmq.
rmq_node_up() { timeout 30 rabbitmq-diagnostics -q ping >/dev/null 2>&1; }

# Crash dumps go to /var/log/rabbitmq once logging is set up, to the cwd before that.
rmq_new_crash_dump() {
  local d
  for d in /var/log/rabbitmq/erl_crash.dump /var/lib/rabbitmq/erl_crash.dump; do
    if [ -n "$(find "$d" -newer "$rmq_start_log" 2>/dev/null)" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

rmq_logs() {
  local log=/var/log/rabbitmq/$RABBITMQ_NODE.log dump
  if [ -n "$rmq_start_log" ] && [ -s "$rmq_start_log" ]; then
    echo "---- output of rabbitmq-server -detached" >&2
    tail -n 20 "$rmq_start_log" >&2 || true
  fi
  if [ -s "$log" ] && grep -q 'BOOT FAILED' "$log"; then
    echo "---- last BOOT FAILED report in $log" >&2
    { tac "$log" | sed '/BOOT FAILED/q' | tac | head -n 25 >&2; } || true
  elif [ -s "$log" ]; then
    echo "---- last lines of $log" >&2
    tail -n 25 "$log" >&2 || true
  fi
  if [ -n "$rmq_start_log" ] && dump=$(rmq_new_crash_dump); then
    echo "---- $dump" >&2
    grep -m1 '^Slogan' "$dump" >&2 || true
  fi
}

# Test TLS material for the AMQPS listener (127.0.0.1:5671), in $RMQ_TLS_DIR:
#   ca.pem, ca.key          a test CA (self-signed)
#   server.pem, server.key  the broker's certificate (CN localhost, SAN localhost and 127.0.0.1)
#   client.pem, client.key  a client certificate from the same CA (optional client auth)
#   other-ca.pem            an unrelated CA that signed nothing here (tests of a wrong CA)
# Made once and kept while valid for at least 30 more days; sets CHANGED=1 when (re)made.
# Test material only: the keys are readable by the rabbitmq user and by root.
RMQ_TLS_DIR=/etc/rabbitmq/tls
rmq_tls_ok() {
  local d=$RMQ_TLS_DIR f
  for f in ca.pem ca.key server.pem server.key client.pem client.key other-ca.pem; do
    [ -s "$d/$f" ] || return 1
  done
  openssl verify -CAfile "$d/ca.pem" "$d/server.pem" "$d/client.pem" >/dev/null 2>&1 &&
    openssl x509 -checkend $((30 * 86400)) -noout -in "$d/server.pem" >/dev/null 2>&1 &&
    openssl x509 -checkend $((30 * 86400)) -noout -in "$d/ca.pem" >/dev/null 2>&1
}
rmq_tls() {
  local d=$RMQ_TLS_DIR tmp leaf
  install -d -o rabbitmq -g rabbitmq -m 755 "$d"
  if ! rmq_tls_ok; then
    say "rabbitmq: generating a test CA and server/client certificates in $d"
    tmp=$(mktemp -d)
    (
      set -e
      cd "$tmp"
      ca_ext=(-addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign')
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj '/CN=warren test CA' \
        "${ca_ext[@]}" -keyout ca.key -out ca.pem 2>/dev/null
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj '/CN=warren unrelated test CA' \
        "${ca_ext[@]}" -keyout other-ca.key -out other-ca.pem 2>/dev/null
      leaf='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment'
      printf '%s\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' "$leaf" >server.ext
      printf '%s\nextendedKeyUsage=clientAuth\n' "$leaf" >client.ext
      for name in server client; do
        openssl req -newkey rsa:2048 -nodes -subj "/CN=${name/server/localhost}" \
          -keyout "$name.key" -out "$name.csr" 2>/dev/null
        openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
          -extfile "$name.ext" -out "$name.pem" 2>/dev/null
      done
      install -o rabbitmq -g rabbitmq -m 644 ca.pem other-ca.pem server.pem client.pem "$d/"
      install -o rabbitmq -g rabbitmq -m 600 ca.key server.key client.key "$d/"
    ) || { rm -rf "$tmp"; die "rabbitmq: cannot generate the test TLS certificates with openssl"; }
    rm -rf "$tmp"
    rmq_tls_ok || die "rabbitmq: the generated certificates in $d do not verify"
    CHANGED=1
  fi
}

rmq_configure() {
  # Sets CHANGED=1 when anything changed that a running node must be restarted for.
  CHANGED=0
  install -d -o rabbitmq -g rabbitmq -m 755 /etc/rabbitmq
  rmq_tls
  write_if_changed /etc/rabbitmq/rabbitmq-env.conf <<'EOF'
# Written by warren's scripts/services.sh; rewritten on each run.
# A fixed node name that always resolves to loopback: the CLI tools find the node through epmd
# on the node's host, and epmd listens on 127.0.0.1 only, so rabbit@<hostname> would break
# wherever the hostname resolves to a non-loopback address.
NODENAME=rabbit@localhost
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=5672
ERL_EPMD_ADDRESS=127.0.0.1
# Erlang distribution (inter-node/CLI port 25672, and the CLI's own 35672-35682) on loopback too.
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
# Open files: this file is sourced by the node's start script after it has switched to the
# rabbitmq user (a ulimit before rabbitmq-server does not survive that switch). RabbitMQ keeps
# file handles per vhost (message stores, queue indexes), and at the soft limit of 1024 some
# hundred leftover test vhosts exhausted them: vhost creation, then the boot, stalled.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
EOF
  write_if_changed /etc/rabbitmq/rabbitmq.conf <<'EOF'
# Written by warren's scripts/services.sh; rewritten on each run. Local dev/test broker.
# Every listener on loopback only.
listeners.tcp.1 = 127.0.0.1:5672
management.tcp.ip = 127.0.0.1
management.tcp.port = 15672
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = 15692

# guest/guest is the dev/test user; it may only connect from localhost (the default, kept).
loopback_users.guest = true

# Resource alarms. A broker in alarm blocks every publishing connection, which on a dev box or
# CI runner looks like a hung test rather than an alarm, so set the limits for a shared machine:
# - memory: 0.6 of RAM (default 0.4). The broker shares the box with cargo/rustc builds, and
#   0.4 of a small machine is reached by a modest backlog during load tests. Tests that want to
#   see a memory alarm set it at run time: rabbitmqctl set_vm_memory_high_watermark 0.0001
#   (and back: rabbitmqctl set_vm_memory_high_watermark 0.6).
# - disk: an absolute 256MB, not the production advice of relative 1.0-2.0 x RAM, which on a
#   24 GiB box would demand 24-48 GiB free and trip on an ordinary dev disk. 256MB (default
#   50MB) still blocks publishers before the disk actually fills up.
vm_memory_high_watermark.relative = 0.6
disk_free_limit.absolute = 256MB
EOF
  # Quorum queues report their ready and unacknowledged figures on each tick (default 5 s);
  # the tests' settled check (tests/api/helpers.rs) reads them from the Prometheus endpoint and
  # wants them fresh, so the test broker ticks every 500 ms. Only advanced.config can set it.
  write_if_changed /etc/rabbitmq/advanced.config <<'EOF'
%% Written by warren's scripts/services.sh; rewritten on each run.
[{rabbit, [{quorum_tick_interval, 500}]}].
EOF
  # The AMQPS listener in a file of its own (RabbitMQ reads conf.d/*.conf after rabbitmq.conf),
  # so that rabbitmq.conf stays as it was before TLS and scripts that write only that file see
  # no change to restart for.
  install -d -o rabbitmq -g rabbitmq -m 755 /etc/rabbitmq/conf.d
  write_if_changed /etc/rabbitmq/conf.d/10-warren-tls.conf <<EOF
# Written by warren's scripts/services.sh; rewritten on each run. AMQPS on loopback with the
# test certificates this script makes in $RMQ_TLS_DIR. Client certificates are checked when
# presented, not required.
listeners.ssl.1 = 127.0.0.1:5671
ssl_options.cacertfile = $RMQ_TLS_DIR/ca.pem
ssl_options.certfile = $RMQ_TLS_DIR/server.pem
ssl_options.keyfile = $RMQ_TLS_DIR/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
EOF
  # Enable the plugins offline (writes /etc/rabbitmq/enabled_plugins only, keeps others listed);
  # the node picks them up, with the listener settings above, when it (re)starts.
  if ! grep -qs 'rabbitmq_management[],]' /etc/rabbitmq/enabled_plugins ||
    ! grep -qs 'rabbitmq_prometheus[],]' /etc/rabbitmq/enabled_plugins; then
    say "rabbitmq: enabling plugins rabbitmq_management, rabbitmq_prometheus (offline)"
    rabbitmq-plugins --offline enable rabbitmq_management rabbitmq_prometheus >/dev/null ||
      die "rabbitmq-plugins --offline enable failed"
    CHANGED=1
  fi
  # Ownership as Debian expects it: the node runs as rabbitmq and must read its config and own
  # its data (root-owned leftovers, e.g. from running rabbitmq tools as root, break the boot).
  chown rabbitmq:rabbitmq /etc/rabbitmq /etc/rabbitmq/*.conf /etc/rabbitmq/advanced.config \
    /etc/rabbitmq/enabled_plugins \
    /etc/rabbitmq/conf.d /etc/rabbitmq/conf.d/*.conf
  install -d -o rabbitmq -g rabbitmq -m 755 /var/lib/rabbitmq /var/log/rabbitmq
  # A running node creates and removes files as it goes (mnesia's .DCL/.TMP): one that
  # vanishes between the listing and the chown is no leftover, so neither may fail the script.
  find /var/lib/rabbitmq /var/log/rabbitmq -ignore_readdir_race \! -user rabbitmq -print0 |
    xargs -0 -r chown rabbitmq:rabbitmq 2>/dev/null || true
  if [ -f /var/lib/rabbitmq/.erlang.cookie ]; then chmod 400 /var/lib/rabbitmq/.erlang.cookie; fi
}

rmq_start() {
  local start=$SECONDS deadline=$((SECONDS + RABBITMQ_START_TIMEOUT)) pid
  local pidfile=/var/lib/rabbitmq/mnesia/$RABBITMQ_NODE.pid
  # The node is down here: a pid file left from a crash would fool the liveness check below.
  rm -f "$pidfile"
  rmq_start_log=$(mktemp /tmp/warren-rabbitmq-start.XXXXXX)
  trap 'rm -f "$rmq_start_log"' EXIT
  say "rabbitmq: starting (rabbitmq-server -detached as user rabbitmq)"
  rabbitmq-server -detached >"$rmq_start_log" 2>&1 || { rmq_logs; die "rabbitmq: rabbitmq-server -detached failed"; }
  # await_startup fails at once while the node is not yet reachable: retry until the deadline,
  # and stop early when the node is gone: its pid file (written early in the boot) names a dead
  # process, or the Erlang VM wrote a crash dump (a failure before the pid file is written).
  until timeout 120 rabbitmqctl -q await_startup --timeout 110 >/dev/null 2>&1; do
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if { [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; } || rmq_new_crash_dump >/dev/null; then
      rmq_logs
      die "rabbitmq: node $RABBITMQ_NODE exited during boot (see the report above)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      rmq_logs
      die "rabbitmq: node $RABBITMQ_NODE did not start within ${RABBITMQ_START_TIMEOUT}s"
    fi
    sleep 2
  done
  say "rabbitmq: node $RABBITMQ_NODE booted in $((SECONDS - start))s"
}

rmq_wait_api() {
  local deadline=$((SECONDS + 60))
  until rmq_api_ok; do
    if [ $SECONDS -ge $deadline ]; then
      rmq_logs
      die "rabbitmq: management API http://127.0.0.1:15672/api/overview does not answer for guest"
    fi
    sleep 1
  done
}

# The AMQPS listener answers a TLS handshake that verifies against the test CA.
rmq_tls_listener_ok() {
  timeout 10 openssl s_client -connect 127.0.0.1:5671 -CAfile "$RMQ_TLS_DIR/ca.pem" \
    -verify_return_error -verify_hostname localhost </dev/null >/dev/null 2>&1
}

ensure_rabbitmq() {
  local restart
  # The node is rabbit@localhost and epmd listens on 127.0.0.1: localhost must resolve to it.
  # (getent alone is not enough: with only a loopback interface up it hides IPv4 addresses.)
  if [[ "$(getent ahostsv4 localhost 2>/dev/null)" != 127.* ]] &&
    ! grep -Eqs '^[[:space:]]*127\.[0-9.]+[[:space:]](.*[[:space:]])?localhost([[:space:]]|$)' /etc/hosts; then
    die "rabbitmq: 'localhost' does not resolve to 127.x.x.x (add '127.0.0.1 localhost' to /etc/hosts)"
  fi
  rmq_configure
  restart=$CHANGED
  if rmq_api_ok && [ "$restart" = 0 ]; then
    rmq_tls_listener_ok ||
      die "rabbitmq: running, but no verified TLS handshake on 127.0.0.1:5671 (a node started before this config? restart it: rabbitmqctl shutdown, then run this again)"
    say "rabbitmq: already running (management API and AMQPS listener answer)"
    return 0
  fi
  if rmq_node_up; then
    if [ "$restart" = 1 ]; then
      say "rabbitmq: configuration changed, restarting the node"
      timeout 120 rabbitmqctl -q shutdown >/dev/null 2>&1 || die "rabbitmq: rabbitmqctl shutdown failed"
      rmq_start
    else
      say "rabbitmq: node is up, waiting for it to finish booting"
      timeout 120 rabbitmqctl -q await_startup --timeout 110 >/dev/null 2>&1 ||
        { rmq_logs; die "rabbitmq: node up but the app did not start"; }
    fi
  else
    if curl -s -m 2 -o /dev/null http://127.0.0.1:15672/ 2>/dev/null; then
      die "rabbitmq: something answers on 127.0.0.1:15672 but node $RABBITMQ_NODE is unreachable (another broker with another node name or cookie?)"
    fi
    rmq_start
  fi
  rmq_wait_api
  rmq_tls_listener_ok || { rmq_logs; die "rabbitmq: no verified TLS handshake on 127.0.0.1:5671"; }
  say "rabbitmq: running, management API and AMQPS listener answer"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

pg_psql() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
pg_running() { pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" status >/dev/null 2>&1; }

pg_logs() {
  local f=/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log
  if [ -s "$f" ]; then echo "---- last lines of $f" >&2; tail -n 30 "$f" >&2; fi
}

ensure_postgres() {
  local start deadline
  if [ ! -f "/etc/postgresql/$PG_VERSION/$PG_CLUSTER/postgresql.conf" ]; then
    say "postgres: creating cluster $PG_VERSION/$PG_CLUSTER"
    pg_createcluster --locale=C.UTF-8 "$PG_VERSION" "$PG_CLUSTER" >/dev/null ||
      die "postgres: pg_createcluster $PG_VERSION $PG_CLUSTER failed"
  fi
  CHANGED=0
  write_if_changed "/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d/warren.conf" <<'EOF'
# Written by warren's scripts/services.sh: local dev/test server, loopback only.
listen_addresses = '127.0.0.1'
port = 5432
EOF
  chown -R postgres:postgres "/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d"
  # The socket directory lives on /run; without systemd-tmpfiles nobody else creates it.
  install -d -o postgres -g postgres -m 2775 /var/run/postgresql

  if pg_running; then
    if [ "$CHANGED" = 1 ]; then
      say "postgres: configuration changed, restarting cluster $PG_VERSION/$PG_CLUSTER"
      pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart || { pg_logs; die "postgres: restart failed"; }
    else
      say "postgres: already running"
    fi
  else
    say "postgres: starting cluster $PG_VERSION/$PG_CLUSTER"
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start || { pg_logs; die "postgres: pg_ctlcluster $PG_VERSION $PG_CLUSTER start failed"; }
  fi
  start=$SECONDS deadline=$((SECONDS + POSTGRES_START_TIMEOUT))
  until pg_isready -q -h 127.0.0.1 -p 5432 -t 2; do
    if [ $SECONDS -ge $deadline ]; then
      pg_logs
      die "postgres: not accepting connections on 127.0.0.1:5432 after ${POSTGRES_START_TIMEOUT}s"
    fi
    sleep 1
  done
  [ $((SECONDS - start)) -lt 2 ] || say "postgres: accepting connections after $((SECONDS - start))s"

  # Role and database for dev/tests (tests create their own databases: hence CREATEDB).
  pg_psql <<'EOF' || die "postgres: could not create role warren"
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'warren') THEN
    CREATE ROLE warren LOGIN CREATEDB PASSWORD 'warren';
  ELSE
    ALTER ROLE warren LOGIN CREATEDB PASSWORD 'warren';
  END IF;
END
$$;
EOF
  if [ "$(pg_psql -tAc "SELECT 1 FROM pg_database WHERE datname = 'warren'")" != 1 ]; then
    say "postgres: creating role-owned database warren"
    pg_psql -c 'CREATE DATABASE warren OWNER warren' || die "postgres: could not create database warren"
  else
    pg_psql -c 'ALTER DATABASE warren OWNER TO warren' || die "postgres: could not give database warren to role warren"
  fi
  PGPASSWORD=warren PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -p 5432 -U warren -d warren -tAc 'SELECT 1' >/dev/null ||
    die "postgres: cannot log in as warren/warren to database warren on 127.0.0.1:5432"
  say "postgres: running, role/database warren ready"
}

# ---------------------------------------------------------------------------------------------

[ "$want_rmq" = 0 ] || ensure_rabbitmq
[ "$want_pg" = 0 ] || ensure_postgres

if [ "$want_rmq" = 1 ]; then
  say "AMQP:          amqp://guest:guest@127.0.0.1:5672/%2f"
  say "AMQPS:         amqps://guest:guest@127.0.0.1:5671/%2f (CA: $RMQ_TLS_DIR/ca.pem)"
  say "management UI: http://127.0.0.1:15672 (guest/guest)"
fi
if [ "$want_pg" = 1 ]; then
  say "PostgreSQL:    postgres://warren:warren@127.0.0.1:5432/warren"
fi
