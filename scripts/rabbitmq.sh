#!/usr/bin/env bash
# RabbitMQ from Debian's package, on loopback only, for loadgen runs and tests.
#   scripts/rabbitmq.sh install   apt-get install rabbitmq-server and bind it to 127.0.0.1
#   scripts/rabbitmq.sh start     start the node (detached) and wait until 5672 answers
#   scripts/rabbitmq.sh stop      stop the node this script started, by its PID, and its epmd
# PID 1 here is not systemd, so the node is started by hand (see ../shared/services.md).
set -euo pipefail
ENV_FILE=/etc/rabbitmq/rabbitmq-env.conf
PID_FILE=/var/lib/rabbitmq/mnesia/rabbit@localhost.pid
STATE=${LOADGEN_STATE_DIR:-/tmp/loadgen-peers}
mkdir -p "$STATE"

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

case "${1:-}" in
  install)
    if ! command -v rabbitmq-server >/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq rabbitmq-server >/dev/null
    fi
    if ! grep -q '^NODE_IP_ADDRESS=127.0.0.1' "$ENV_FILE" 2>/dev/null; then
      cat >>"$ENV_FILE" <<'CONF'
NODENAME=rabbit@localhost
NODE_IP_ADDRESS=127.0.0.1
ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CONF
    fi
    ;;
  start)
    if port_open; then echo "rabbitmq: something already listens on 127.0.0.1:5672"; exit 0; fi
    pgrep -x epmd >/dev/null || echo started >"$STATE/epmd-ours"
    rabbitmq-server -detached
    for _ in $(seq 1 120); do
      if port_open && rabbitmqctl await_startup >/dev/null 2>&1; then
        echo "rabbitmq: up on 127.0.0.1:5672 (pid $(cat "$PID_FILE"))"
        exit 0
      fi
      sleep 0.5
    done
    echo "rabbitmq: did not come up within 60 s" >&2
    exit 1
    ;;
  stop)
    if [[ -f $PID_FILE ]]; then
      pid=$(cat "$PID_FILE")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    if [[ -f $STATE/epmd-ours ]]; then
      epmd_pid=$(pgrep -x epmd || true)
      [[ -n $epmd_pid ]] && kill -TERM $epmd_pid 2>/dev/null || true
      rm -f "$STATE/epmd-ours"
    fi
    echo "rabbitmq: stopped"
    ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
