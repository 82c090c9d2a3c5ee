#!/usr/bin/env bash
# Reproduces results/<date>-paper: our broker (release build, fresh data directory, the
# paper's asynchronous flush) beside RabbitMQ and ActiveMQ started by their scripts, then
# `loadgen paper`. Usage: scripts/paper-run.sh OUT_DIR [MESSAGES]
#   scripts/rabbitmq.sh install && scripts/rabbitmq.sh start
#   scripts/activemq.sh install && scripts/activemq.sh start paper
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR [MESSAGES]}
messages=${2:-1000000}
cargo build --release --locked -p server --bin broker
cargo build --release --locked -p loadgen
data=$(mktemp -d /tmp/paper-broker.XXXXXX)
BROKER_FLUSH=interval RUST_LOG=warn target/release/broker --listen 127.0.0.1:9092 --data-dir "$data" \
  >"$data.log" 2>&1 &
broker=$!
trap 'kill -TERM $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$data" "$data.log"' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.1; done
target/release/loadgen paper --messages "$messages" --out "$out" \
  --note "our broker: release build, BROKER_FLUSH=interval (fdatasync once a second), io_uring write path, $(nproc) cores, fresh data dir on $(df --output=fstype "$data" | tail -1)" \
  --note "RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?'): Debian package, defaults, durable queue" \
  --note "ActiveMQ $(dpkg-query -W -f='${Version}' activemq 2>/dev/null || echo '?'): Debian package, KahaDB journalDiskSyncStrategy=periodic (1 s), 2 GB heap, memoryUsage 40% of heap (scripts/activemq.sh)" \
  --note "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
