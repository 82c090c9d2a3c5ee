#!/usr/bin/env bash
# Reproduces results/<date>-paper (and -durable): our broker (release build, fresh data
# directory) beside RabbitMQ and ActiveMQ started by their scripts, then `loadgen paper`.
# Usage: scripts/paper-run.sh OUT_DIR [MESSAGES] [paper|durable]
#   paper (default): our broker flushes once a second (the paper's asynchronous flush);
#     before it: scripts/rabbitmq.sh start; scripts/activemq.sh start paper;
#     scripts/kafka.sh start paper
#   durable: our broker flushes per append (its default), loadgen's durable mode, and the
#     latency experiment at 1,000 msgs/s (a rate every broker here sustains durably);
#     before it: scripts/rabbitmq.sh start; scripts/activemq.sh start durable;
#     scripts/kafka.sh start durable
# (run `scripts/rabbitmq.sh install`, `scripts/activemq.sh install` and
# `scripts/kafka.sh install` once first). A peer that is not running is reported as
# unreachable in the results, not fatal.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR [MESSAGES] [paper|durable]}
messages=${2:-1000000}
mode=${3:-paper}
case $mode in
  paper)
    flush=interval
    flush_note="BROKER_FLUSH=interval (fdatasync once a second)"
    activemq_note="KahaDB journalDiskSyncStrategy=periodic (1 s)"
    kafka_note="Kafka's defaults (the page cache flushes)"
    extra=()
    ;;
  durable)
    flush=per-append
    flush_note="BROKER_FLUSH=per-append (fdatasync before acks=all is answered, group commit)"
    activemq_note="KahaDB default journal sync (per send)"
    kafka_note="log.flush.interval.messages=1 (an fsync per append)"
    extra=(--mode durable --latency-rate 1000)
    ;;
  *) echo "usage: $0 OUT_DIR [MESSAGES] [paper|durable]" >&2; exit 2 ;;
esac
cargo build --release --locked -p server --bin broker
cargo build --release --locked -p loadgen
data=$(mktemp -d /tmp/paper-broker.XXXXXX)
BROKER_FLUSH=$flush RUST_LOG=warn target/release/broker --listen 127.0.0.1:9092 --data-dir "$data" \
  >"$data.log" 2>&1 &
broker=$!
trap 'kill -TERM $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$data" "$data.log"' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.1; done
target/release/loadgen paper --messages "$messages" --out "$out" "${extra[@]}" \
  --targets kafka,kafka-lean,apache-kafka,apache-kafka-lean,rabbitmq,activemq \
  --note "our broker: release build, $flush_note, adaptive write path (pwritev up to 64 KiB, io_uring above), $(nproc) cores, fresh data dir on $(df --output=fstype "$data" | tail -1)" \
  --note "RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?'): Debian package, defaults, durable queue" \
  --note "ActiveMQ $(dpkg-query -W -f='${Version}' activemq 2>/dev/null || echo '?'): Debian package, $activemq_note, 2 GB heap, memoryUsage 40% of heap (scripts/activemq.sh)" \
  --note "Apache Kafka ${KAFKA_VERSION:-4.4.0}: Maven Central jars, KRaft single node, $kafka_note, 1 GB heap (scripts/kafka.sh)" \
  --note "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
