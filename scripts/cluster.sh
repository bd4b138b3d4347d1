#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, for the cluster tests (tests/api/cluster.rs)
# and for trying warren against a cluster (scripts/run-local.sh --cluster):
#
#   node           AMQP             management        Prometheus        distribution
#   c1@localhost   127.0.0.1:5681   127.0.0.1:15681   127.0.0.1:15781   25681 (from 127.0.0.11)
#   c2@localhost   127.0.0.1:5682   127.0.0.1:15682   127.0.0.1:15782   25682 (from 127.0.0.12)
#   c3@localhost   127.0.0.1:5683   127.0.0.1:15683   127.0.0.1:15783   25683 (from 127.0.0.13)
#
# Each node has its own config (/etc/rabbitmq-cluster/cN), data (/var/lib/rabbitmq-cluster/cN)
# and logs (/var/log/rabbitmq-cluster/cN); they share the Erlang cookie of the main node
# (scripts/services.sh installs the packages and makes it: run it first).
#
#   scripts/cluster.sh up              start what is down, join c2 and c3 to c1, check (default)
#   scripts/cluster.sh status          exit 0 when the three nodes run as one cluster
#   scripts/cluster.sh start cN        start one node (and wait until it answers)
#   scripts/cluster.sh stop cN         stop one node cleanly (rabbitmqctl stop)
#   scripts/cluster.sh kill cN         SIGKILL one node's VM
#   scripts/cluster.sh pid cN          the node's VM pid
#   scripts/cluster.sh partition cN    cut cN's distribution links to the other two (nftables)
#   scripts/cluster.sh heal            remove every cut
#   scripts/cluster.sh grow            give every quorum queue a member on each running node
#   scripts/cluster.sh down            stop all three nodes
#   scripts/cluster.sh reset           stop them and delete their data (a fresh cluster next up)
#
# Partitions: every node listens for distribution on 127.0.0.1 but connects to its peers
# from its own loopback address (inet_dist_connect_options), so an nftables rule can drop
# exactly the links between one node and the others while clients and the CLI still reach it.
# The partition handling mode is pause_minority: the side that cannot see a majority stops
# its listeners (warren's connections to it drop and move to the majority) and resumes on its
# own when the partition heals, so there is never a second side accepting writes that would
# have to be thrown away (autoheal's loser), and nothing waits for an operator (ignore).
#
# Quorum queues get a member on every node that is in the cluster when they are declared
# (RabbitMQ's default initial group size); `grow` adds the missing members for queues declared
# while a node was not yet joined (RabbitMQ 3.10 does not do it by itself).
set -euo pipefail

START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-120}
NODES=(c1 c2 c3)
ETC=/etc/rabbitmq-cluster
LIB=/var/lib/rabbitmq-cluster
LOG=/var/log/rabbitmq-cluster
NFT_TABLE=warren_cluster

say() { printf 'cluster: %s\n' "$*"; }
die() { printf 'cluster: ERROR: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] ||
  die "RabbitMQ is not installed: run scripts/services.sh rabbitmq first"
command -v python3 >/dev/null 2>&1 || "$(dirname "${BASH_SOURCE[0]}")/services.sh" install python3

num() { echo "${1#c}"; } # c2 -> 2

# rabbitmqctl and friends for node $1, as the rabbitmq user (its cookie).
rmq() {
  local node=$1 tool=$2
  shift 2
  (cd /var/lib/rabbitmq && runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq \
    RABBITMQ_CONF_ENV_FILE=$ETC/$node/rabbitmq-env.conf "/usr/lib/rabbitmq/bin/$tool" "$@")
}
ctl() { local node=$1; shift; rmq "$node" rabbitmqctl -q -n "$node@localhost" "$@"; }

configure() {
  local node=$1 n
  n=$(num "$node")
  install -d -o rabbitmq -g rabbitmq -m 755 "$ETC/$node" "$ETC/$node/conf.d" "$LIB/$node" "$LOG/$node"
  cat >"$ETC/$node/rabbitmq-env.conf" <<EOF
# Written by warren's scripts/cluster.sh: cluster node $node.
NODENAME=$node@localhost
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=568$n
DIST_PORT=2568$n
ERL_EPMD_ADDRESS=127.0.0.1
MNESIA_BASE=$LIB/$node/mnesia
LOG_BASE=$LOG/$node
CONFIG_FILE=$ETC/$node/rabbitmq.conf
ADVANCED_CONFIG_FILE=$ETC/$node/advanced.config
CONFIG_FILES=$ETC/$node/conf.d
ENABLED_PLUGINS_FILE=$ETC/$node/enabled_plugins
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} -kernel inet_dist_connect_options [{ip,{127,0,0,1$n}}]"
CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
  cat >"$ETC/$node/rabbitmq.conf" <<EOF
# Written by warren's scripts/cluster.sh. Loopback only.
listeners.tcp.1 = 127.0.0.1:568$n
management.tcp.ip = 127.0.0.1
management.tcp.port = 1568$n
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = 1578$n
loopback_users.guest = true
vm_memory_high_watermark.relative = 0.2
disk_free_limit.absolute = 256MB
cluster_partition_handling = pause_minority
# A lost peer is noticed within 10-15 s (default 60 s: 45-75 s), so a cut is seen quickly.
net_ticktime = 10
EOF
  # Quorum queues report their figures every 500 ms (the tests' settled check reads them).
  echo '[{rabbit, [{quorum_tick_interval, 500}]}].' >"$ETC/$node/advanced.config"
  echo '[rabbitmq_management,rabbitmq_prometheus].' >"$ETC/$node/enabled_plugins"
  chown rabbitmq:rabbitmq "$ETC/$node"/*
}

answers() { curl -fsS -m 5 -o /dev/null -u guest:guest "http://127.0.0.1:1568$(num "$1")/api/overview" 2>/dev/null; }

# Starts node $1 when its VM is down; with `wait`, waits until it has booted and its
# management API answers. (A node that is not the first to start waits for its peers before it
# boots, so the nodes of a cluster that was stopped whole are started together, then awaited.)
start_node() {
  local node=$1 wait=${2:-wait} deadline
  configure "$node"
  if ! rmq "$node" rabbitmq-diagnostics -q -n "$node@localhost" ping >/dev/null 2>&1; then
    rm -f "$LIB/$node/mnesia/$node@localhost.pid"
    say "starting $node@localhost"
    rmq "$node" rabbitmq-server -detached >/dev/null 2>&1 || die "rabbitmq-server -detached failed for $node"
  fi
  [ "$wait" = wait ] || return 0
  deadline=$((SECONDS + START_TIMEOUT))
  until ctl "$node" await_startup --timeout 30 >/dev/null 2>&1 && answers "$node"; do
    [ $SECONDS -lt $deadline ] || {
      tail -n 30 "$LOG/$node/$node@localhost.log" >&2 || true
      die "$node@localhost did not start within ${START_TIMEOUT}s"
    }
    sleep 1
  done
}

# The running nodes as node $1 sees them, one per line.
running_nodes() {
  ctl "$1" cluster_status --formatter json 2>/dev/null |
    python3 -c 'import json,sys; print("\n".join(sorted(json.load(sys.stdin).get("running_nodes", []))))'
}

joined() { # is node $1 a member of c1's cluster (running or not)?
  ctl c1 cluster_status --formatter json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if sys.argv[1] in d.get("disk_nodes", [])+d.get("ram_nodes", []) else 1)' "$1@localhost"
}

up() {
  local node
  for node in "${NODES[@]}"; do start_node "$node" nowait; done
  for node in "${NODES[@]}"; do start_node "$node"; done
  for node in c2 c3; do
    if ! joined "$node"; then
      say "joining $node@localhost to c1@localhost"
      ctl "$node" stop_app >/dev/null 2>&1
      ctl "$node" reset >/dev/null 2>&1
      ctl "$node" join_cluster c1@localhost >/dev/null 2>&1 || die "$node: join_cluster c1@localhost failed"
      ctl "$node" start_app >/dev/null 2>&1
      start_node "$node"
    fi
  done
  status || die "the three nodes do not form one running cluster"
  say "running: c1 c2 c3 (amqp 5681-5683, management 15681-15683, prometheus 15781-15783)"
}

status() {
  local want=$'c1@localhost\nc2@localhost\nc3@localhost' node got
  for node in "${NODES[@]}"; do
    got=$(running_nodes "$node" || true)
    if [ "$got" != "$want" ]; then
      say "$node@localhost sees running nodes: ${got//$'\n'/ }"
      return 1
    fi
  done
  say "one cluster of c1 c2 c3, all running"
}

pid_of() { cat "$LIB/$1/mnesia/$1@localhost.pid"; }

partition() {
  local n others
  n=$(num "$1")
  command -v nft >/dev/null 2>&1 || "$(dirname "${BASH_SOURCE[0]}")/services.sh" install nftables
  others=$(for m in 1 2 3; do [ "$m" = "$n" ] || printf '127.0.0.1%s, ' "$m"; done)
  others="{ ${others%, } }"
  nft add table inet $NFT_TABLE
  nft "add chain inet $NFT_TABLE output { type filter hook output priority 0; policy accept; }"
  # The node's own links out (from 127.0.0.1N to a peer's port) and back, and the peers'
  # links in (from their addresses to its port) and back.
  local p peers_ports
  peers_ports=$(for m in 1 2 3; do [ "$m" = "$n" ] || printf '2568%s, ' "$m"; done)
  peers_ports="{ ${peers_ports%, } }"
  nft add rule inet $NFT_TABLE output ip saddr 127.0.0.1$n tcp dport "$peers_ports" drop
  nft add rule inet $NFT_TABLE output ip daddr 127.0.0.1$n tcp sport "$peers_ports" drop
  nft add rule inet $NFT_TABLE output ip saddr "$others" tcp dport 2568$n drop
  nft add rule inet $NFT_TABLE output ip daddr "$others" tcp sport 2568$n drop
  say "c$n@localhost cut off from the other nodes"
}

heal() {
  nft delete table inet $NFT_TABLE 2>/dev/null || true
  say "no cuts"
}

grow() {
  local node
  for node in "${NODES[@]}"; do
    # Members are added from the node itself; queues that have one there already are skipped.
    ctl "$node" ping >/dev/null 2>&1 || continue
    rmq "$node" rabbitmq-queues -q -n "$node@localhost" grow "$node@localhost" all >/dev/null
  done
  say "every quorum queue has a member on each running node"
}

what=${1:-up}
case "$what" in start | stop | kill | pid | partition) [[ "${2:-}" =~ ^c[123]$ ]] || die "$what: which node (c1, c2 or c3)?" ;; esac
case "$what" in
  up) up ;;
  status) status ;;
  start) start_node "$2" ;;
  stop) ctl "$2" stop ;;
  kill) kill -9 "$(pid_of "$2")" ;;
  pid) pid_of "$2" ;;
  partition) partition "$2" ;;
  heal) heal ;;
  grow) grow ;;
  down)
    heal
    for node in "${NODES[@]}"; do ctl "$node" stop >/dev/null 2>&1 || true; done
    say "stopped"
    ;;
  reset)
    heal
    for node in "${NODES[@]}"; do ctl "$node" stop >/dev/null 2>&1 || true; done
    rm -rf "${LIB:?}"/c1 "${LIB:?}"/c2 "${LIB:?}"/c3
    say "stopped, data deleted"
    ;;
  *) die "usage: $0 [up|status|start cN|stop cN|kill cN|pid cN|partition cN|heal|grow|down|reset]" ;;
esac
