#!/usr/bin/env bash
# What replication costs, side by side in one session on three brokers of this machine:
# librdkafka producing 1 KiB messages in big batches (up to 1000 per request) to a
# 3-partition topic with replication factor 1 or 3 and acks=1 or acks=all (acks=all is
# idempotent), alternating the four settings for ROUNDS rounds so a noisy host hits each
# alike. Every broker runs with one core and the default `flush = per-append`.
#
# usage: scripts/replication-bench.sh OUT_DIR [MESSAGES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR [MESSAGES] [ROUNDS]}
messages=${2:-200000}
rounds=${3:-2}
cargo build --release --locked -p server -p loadgen
mkdir -p "$out"
root=$(mktemp -d /tmp/replication-bench.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait || true; rm -rf "$root"' EXIT
voters="1@127.0.0.1:19191,2@127.0.0.1:19192,3@127.0.0.1:19193"
for id in 1 2 3; do
  BROKER_NODE_ID=$id BROKER_CONTROLLER_LISTEN=127.0.0.1:1919$id \
    BROKER_CONTROLLER_QUORUM_VOTERS=$voters RUST_LOG=warn \
    target/release/broker --listen 127.0.0.1:919$id --data-dir "$root/broker-$id" --cores 1 \
    >"$root/broker-$id.log" 2>&1 &
  pids+=($!)
done
for port in 9191 9192 9193; do
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done
sleep 3 # registrations committed
{
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "machine: $(nproc) vCPU, $(uname -r), $(awk '/MemTotal/ {print int($2/1024/1024) " GiB"}' /proc/meminfo)"
  echo "brokers: 3 processes on 127.0.0.1, --cores 1 each, flush = per-append"
  echo "command: scripts/replication-bench.sh $out $messages $rounds"
} >"$out/how.txt"
run() { # label rf acks round
  target/release/loadgen --kafka 127.0.0.1:9191 --replication-factor "$2" --kafka-acks "$3" \
    produce --target kafka --mode durable --messages "$messages" --size 1024 --batch 1000 \
    --linger-ms 5 --partitions 3 --partitioner per-batch --no-verify \
    --out "$out/$1-round$4" >"$out/$1-round$4.txt" 2>&1
}
for round in $(seq 1 "$rounds"); do
  run rf1-acks1 1 1 "$round"
  run rf1-acksall 1 all "$round"
  run rf3-acks1 3 1 "$round"
  run rf3-acksall 3 all "$round"
done
echo "| setting | round | msgs/s | MB/s | p50 ms | p99 ms | broker 1 CPU s |" >"$out/summary.md"
echo "|---|---:|---:|---:|---:|---:|---:|" >>"$out/summary.md"
for f in "$out"/rf*-round*.txt; do
  name=$(basename "$f" .txt)
  row=$(grep '^| produce |' "$f" | head -1)
  field() { echo "$row" | cut -d'|' -f"$1" | tr -d ' '; }
  echo "| ${name%-round*} | ${name##*-round} | $(field 5) | $(field 6) | $(field 7) | $(field 8) | $(field 12) |" >>"$out/summary.md"
done
cat "$out/summary.md"
