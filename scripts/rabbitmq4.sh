#!/usr/bin/env bash
# RabbitMQ 4.0 beside the host's 3.10: a Debian 13 ("trixie") root built with debootstrap in
# /var/lib/warren-trixie, Debian's rabbitmq-server 4.0.x installed in it, and its nodes run
# there with chroot (no systemd, no Docker), loopback only, so that the broker-facing tests
# run against 4.0 as well (scripts/test.sh). Two nodes, each with its own ports and data:
#
#   rabbit4@localhost  AMQP 127.0.0.1:5690, management 15690, prometheus 15790, dist 25690,
#                      AMQPS 5692 (with scripts/services.sh's test certificates, when made)
#   chaos4@localhost   AMQP 127.0.0.1:5691, management 15691, prometheus 15791, dist 25691
#                      (the chaos suite's: stopped, killed and alarmed by tests/api/chaos.rs)
#
# Both use their own epmd on 127.0.0.1:4380 (ERL_EPMD_PORT), never the host's epmd on 4369
# with its Erlang 25 nodes (rabbit@localhost, chaos@localhost). guest/guest from loopback,
# quorum_tick_interval 500 ms (the tests' settled check reads queue figures from Prometheus,
# as on the 3.10 nodes: see scripts/services.sh), plugins management and prometheus.
#
#   scripts/rabbitmq4.sh [NODE] [start]      build the root if needed, start NODE if down,
#                                            wait until its management API answers
#   scripts/rabbitmq4.sh [NODE] stop         stop NODE (rabbitmqctl shutdown)
#   scripts/rabbitmq4.sh [NODE] status       exit 0 when NODE's management API answers
#   scripts/rabbitmq4.sh [NODE] ctl ARGS...  rabbitmqctl ARGS inside the root against NODE
#   scripts/rabbitmq4.sh [NODE] pid          print NODE's beam pid (a host pid: chroot
#                                            shares the host's process table)
#   scripts/rabbitmq4.sh purge               stop both nodes, unmount, delete the root
#
# NODE is rabbit4 (the default), chaos4, or all (start, stop and status only).
# Needs root. Works on a fresh Debian 12 machine that reaches Debian's package mirror:
# installs debootstrap with apt-get when missing. Idempotent: a second `start` with the node
# up only checks (a second). The root is reused while rabbitmq-server 4.0.x is installed in
# it; a fresh build (debootstrap minbase, then apt-get install rabbitmq-server) takes about
# a minute and a half here (84 s to 100 s with both nodes started). /proc, /dev and /sys are
# mounted into the root (each only when not yet mounted) and stay mounted while the root
# exists (`purge` unmounts them).
#
# Timeouts (seconds) from the environment: RABBITMQ_START_TIMEOUT (default 180).
set -euo pipefail

ROOT=/var/lib/warren-trixie
MIRROR=http://deb.debian.org/debian
SUITE=trixie
EPMD_PORT=4380
START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-180}
APT_STAMP=/tmp/warren-apt-updated # shared with scripts/services.sh: host apt-get update once an hour

say() { printf 'rabbitmq4: %s\n' "$*" >&2; }
die() { printf 'rabbitmq4: ERROR: %s\n' "$*" >&2; exit 1; }
usage() {
  echo "usage: $0 [rabbit4|chaos4|all] [start|stop|status|ctl ARGS...|pid]  or  $0 purge" >&2
  exit 2
}
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mount)"

node=rabbit4
case "${1:-}" in
  rabbit4 | chaos4 | all) node=$1; shift ;;
esac
cmd=${1:-start}
[ $# -eq 0 ] || shift
case "$cmd" in
  start | stop | status) ;;
  ctl | pid) [ "$node" != all ] || usage ;;
  purge) [ $# -eq 0 ] || usage ;;
  *) usage ;;
esac
[ "$cmd" = ctl ] || [ $# -eq 0 ] || usage

# Ports of a node: AMQP, management, prometheus, distribution.
ports() {
  case "$1" in
    rabbit4) echo 5690 15690 15790 25690 ;;
    chaos4) echo 5691 15691 15791 25691 ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# The Debian 13 root

rmq_version() { chroot "$ROOT" dpkg-query -W -f='${Status} ${Version}' rabbitmq-server 2>/dev/null || true; }
root_ready() {
  [ -x "$ROOT/usr/lib/rabbitmq/bin/rabbitmqctl" ] && [[ "$(rmq_version)" == "install ok installed 4.0."* ]]
}

mount_root() {
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc" || die "cannot mount /proc in $ROOT"
  mountpoint -q "$ROOT/sys" || mount -t sysfs sysfs "$ROOT/sys" || die "cannot mount /sys in $ROOT"
  mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev" || die "cannot bind-mount /dev in $ROOT"
}

umount_root() {
  local d
  for d in dev sys proc; do
    if mountpoint -q "$ROOT/$d"; then umount "$ROOT/$d" || umount -l "$ROOT/$d" || die "cannot unmount $ROOT/$d"; fi
  done
}

build_root() {
  local start=$SECONDS partial=$ROOT.partial
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$(find "$APT_STAMP" -mmin -60 2>/dev/null)" ]; then
      apt-get update -qq || die "apt-get update failed"
      touch "$APT_STAMP"
    fi
    apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
      die "apt-get install debootstrap failed"
  fi
  if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
    # debootstrap into a directory of its own, renamed when complete: an interrupted run
    # leaves no half root behind under $ROOT.
    [ ! -e "$ROOT" ] || die "$ROOT exists but is no Debian root (no usr/bin/apt-get): remove it (scripts/rabbitmq4.sh purge)"
    rm -rf --one-file-system "$partial"
    say "building a Debian $SUITE root in $ROOT with debootstrap (minbase, $MIRROR)"
    debootstrap --variant=minbase "$SUITE" "$partial" "$MIRROR" >"/tmp/warren-debootstrap.log" 2>&1 || {
      tail -n 20 /tmp/warren-debootstrap.log >&2
      die "debootstrap $SUITE failed (log: /tmp/warren-debootstrap.log)"
    }
    mv "$partial" "$ROOT"
  fi
  mount_root
  # No daemon starts from a maintainer script (we start the nodes ourselves), localhost
  # resolves to loopback (the node names are NAME@localhost), and apt reaches the mirror.
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
  chmod 755 "$ROOT/usr/sbin/policy-rc.d"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
  printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$ROOT/etc/apt/sources.list"
  say "installing rabbitmq-server in $ROOT"
  chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
    sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends rabbitmq-server' \
    >/tmp/warren-trixie-apt.log 2>&1 || {
    tail -n 20 /tmp/warren-trixie-apt.log >&2
    die "apt-get install rabbitmq-server in $ROOT failed (log: /tmp/warren-trixie-apt.log)"
  }
  chroot "$ROOT" apt-get clean
  root_ready || die "rabbitmq-server in $ROOT is $(rmq_version), not 4.0.x"
  say "root ready in $((SECONDS - start))s: rabbitmq-server $(rmq_version | awk '{print $4}')"
}

ensure_root() {
  if root_ready; then mount_root; else build_root; fi
}

# ---------------------------------------------------------------------------------------------
# Nodes

# A RabbitMQ tool (rabbitmq-server, rabbitmqctl, ...) for node $1 inside the root, as the
# rabbitmq user (its cookie, /var/lib/rabbitmq/.erlang.cookie in the root), with the node's
# env file and the root's own epmd port. IN_ROOT_TIMEOUT (seconds) bounds it when set.
in_root() {
  local n=$1 tool=$2 limit=()
  shift 2
  [ -z "${IN_ROOT_TIMEOUT:-}" ] || limit=(timeout "$IN_ROOT_TIMEOUT")
  "${limit[@]}" chroot "$ROOT" /usr/sbin/runuser -u rabbitmq -- env -i \
    PATH=/usr/lib/rabbitmq/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/rabbitmq LANG=C.UTF-8 \
    ERL_EPMD_PORT=$EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_CONF_ENV_FILE="/etc/rabbitmq/$n/rabbitmq-env.conf" \
    sh -c 'cd /var/lib/rabbitmq && exec "$0" "$@"' "/usr/lib/rabbitmq/bin/$tool" "$@"
}

api_ok() {
  local p
  read -r _ p _ _ <<<"$(ports "$1")"
  curl -fsS -m 5 -o /dev/null -u guest:guest "http://127.0.0.1:$p/api/overview" 2>/dev/null
}

pidfile() { echo "$ROOT/var/lib/rabbitmq/$1/mnesia/$1@localhost.pid"; }

configure() {
  local n=$1 amqp mgmt prom dist etc=$ROOT/etc/rabbitmq/$1
  read -r amqp mgmt prom dist <<<"$(ports "$n")"
  install -d -m 755 "$etc" "$etc/conf.d"
  cat >"$etc/rabbitmq-env.conf" <<EOF
# Written by warren's scripts/rabbitmq4.sh: node $n@localhost of the RabbitMQ 4.0 root.
NODENAME=$n@localhost
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=$amqp
DIST_PORT=$dist
MNESIA_BASE=/var/lib/rabbitmq/$n/mnesia
LOG_BASE=/var/log/rabbitmq/$n
CONFIG_FILE=/etc/rabbitmq/$n/rabbitmq.conf
ADVANCED_CONFIG_FILE=/etc/rabbitmq/$n/advanced.config
CONFIG_FILES=/etc/rabbitmq/$n/conf.d
ENABLED_PLUGINS_FILE=/etc/rabbitmq/$n/enabled_plugins
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
# Open files: RabbitMQ keeps file handles per vhost, and the tests make many vhosts.
ulimit -n "\$(ulimit -Hn)" 2>/dev/null || true
EOF
  cat >"$etc/rabbitmq.conf" <<EOF
# Written by warren's scripts/rabbitmq4.sh. Loopback only; limits as in scripts/services.sh.
listeners.tcp.1 = 127.0.0.1:$amqp
management.tcp.ip = 127.0.0.1
management.tcp.port = $mgmt
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = $prom
loopback_users.guest = true
vm_memory_high_watermark.relative = 0.6
disk_free_limit.absolute = 256MB
EOF
  # On rabbit4, the features RabbitMQ 4.0 deprecates are refused, so that warren (or a test)
  # using one fails on 4.0 instead of working until a later release removes it
  # (docs/architecture.md, "RabbitMQ 3.10 and 4.0"). management_metrics_collection stays
  # permitted: the console's queue rates come from it. chaos4 keeps 4.0's defaults (all
  # permitted, with a warning): the chaos suite's own tap queues are transient.
  if [ "$n" = rabbit4 ]; then
    cat >>"$etc/rabbitmq.conf" <<'EOF'
deprecated_features.permit.transient_nonexcl_queues = false
deprecated_features.permit.global_qos = false
deprecated_features.permit.ram_node_type = false
EOF
  fi
  # rabbit4 also listens for AMQPS on 127.0.0.1:5692 with the test certificates that
  # scripts/services.sh made for the 3.10 node (tests/api/nodes.rs uses both listeners of one
  # broker), when they exist; chaos4 has no TLS listener.
  rm -f "$etc/conf.d/10-tls.conf"
  if [ "$n" = rabbit4 ] && [ -s /etc/rabbitmq/tls/server.pem ]; then
    install -d -m 755 "$etc/tls"
    install -m 644 /etc/rabbitmq/tls/ca.pem /etc/rabbitmq/tls/server.pem "$etc/tls/"
    install -m 600 /etc/rabbitmq/tls/server.key "$etc/tls/"
    cat >"$etc/conf.d/10-tls.conf" <<EOF
# Written by warren's scripts/rabbitmq4.sh: AMQPS on loopback with scripts/services.sh's test
# certificates. Client certificates are checked when presented, not required.
listeners.ssl.1 = 127.0.0.1:5692
ssl_options.cacertfile = /etc/rabbitmq/$n/tls/ca.pem
ssl_options.certfile = /etc/rabbitmq/$n/tls/server.pem
ssl_options.keyfile = /etc/rabbitmq/$n/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
EOF
  fi
  echo '[{rabbit, [{quorum_tick_interval, 500}]}].' >"$etc/advanced.config"
  echo '[rabbitmq_management,rabbitmq_prometheus].' >"$etc/enabled_plugins"
  install -d -m 755 "$ROOT/var/lib/rabbitmq/$n" "$ROOT/var/log/rabbitmq/$n"
  chroot "$ROOT" chown -R rabbitmq:rabbitmq "/etc/rabbitmq/$n" "/var/lib/rabbitmq/$n" "/var/log/rabbitmq/$n"
}

node_up() { IN_ROOT_TIMEOUT=30 in_root "$1" rabbitmq-diagnostics -q -n "$1@localhost" ping >/dev/null 2>&1; }

start_node() {
  local n=$1 start=$SECONDS deadline pid mgmt log
  configure "$n"
  if api_ok "$n"; then
    say "$n@localhost already running"
    return 0
  fi
  read -r _ mgmt _ _ <<<"$(ports "$n")"
  log=$ROOT/var/log/rabbitmq/$n/$n@localhost.log
  if ! node_up "$n"; then
    if curl -s -m 2 -o /dev/null "http://127.0.0.1:$mgmt/" 2>/dev/null; then
      die "something answers on 127.0.0.1:$mgmt but node $n@localhost is unreachable"
    fi
    rm -f "$(pidfile "$n")"
    say "starting $n@localhost (RabbitMQ $(rmq_version | awk '{print $4}'), chroot $ROOT)"
    in_root "$n" rabbitmq-server -detached >"/tmp/warren-$n-start.log" 2>&1 ||
      { cat "/tmp/warren-$n-start.log" >&2; die "rabbitmq-server -detached failed for $n@localhost"; }
  fi
  deadline=$((SECONDS + START_TIMEOUT))
  until IN_ROOT_TIMEOUT=60 in_root "$n" rabbitmqctl -q -n "$n@localhost" await_startup --timeout 50 >/dev/null 2>&1 &&
    api_ok "$n"; do
    pid=$(cat "$(pidfile "$n")" 2>/dev/null || true)
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$log" >&2 2>/dev/null || true
      die "$n@localhost exited during boot"
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 30 "$log" >&2 2>/dev/null || true
      die "$n@localhost did not start within ${START_TIMEOUT}s"
    fi
    sleep 1
  done
  say "$n@localhost running in $((SECONDS - start))s (amqp $(ports "$n" | awk '{print $1 ", management " $2 ", prometheus " $3}'))"
}

stop_node() {
  local n=$1 pid
  if ! root_ready || ! node_up "$n"; then
    say "$n@localhost not running"
    return 0
  fi
  pid=$(cat "$(pidfile "$n")" 2>/dev/null || true)
  IN_ROOT_TIMEOUT=120 in_root "$n" rabbitmqctl -q -n "$n@localhost" shutdown >/dev/null 2>&1 || {
    [ -z "$pid" ] || kill -9 "$pid" 2>/dev/null || true
  }
  say "$n@localhost stopped"
}

nodes() { if [ "$node" = all ]; then echo rabbit4 chaos4; else echo "$node"; fi; }

case "$cmd" in
  start)
    ensure_root
    for n in $(nodes); do start_node "$n"; done
    ;;
  stop)
    for n in $(nodes); do stop_node "$n"; done
    ;;
  status)
    rc=0
    for n in $(nodes); do
      if api_ok "$n"; then say "$n@localhost running"; else say "$n@localhost down"; rc=1; fi
    done
    exit "$rc"
    ;;
  ctl)
    root_ready || die "no RabbitMQ 4.0 root in $ROOT (run: $0 start)"
    mount_root
    in_root "$node" rabbitmqctl -n "$node@localhost" "$@"
    ;;
  pid)
    pid=$(cat "$(pidfile "$node")" 2>/dev/null) || die "no pid file $(pidfile "$node")"
    kill -0 "$pid" 2>/dev/null || die "$node@localhost (pid $pid) is not running"
    echo "$pid"
    ;;
  purge)
    if [ -d "$ROOT" ]; then
      for n in rabbit4 chaos4; do stop_node "$n"; done
      # epmd of the root, started by the first node: the only other process that lives there.
      pkill_pids=$(for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && basename "$p"
      done || true)
      [ -z "$pkill_pids" ] || kill $pkill_pids 2>/dev/null || true
      umount_root
      for d in dev sys proc; do ! mountpoint -q "$ROOT/$d" || die "$ROOT/$d still mounted"; done
    fi
    rm -rf --one-file-system "$ROOT" "$ROOT.partial"
    say "removed $ROOT"
    ;;
esac
