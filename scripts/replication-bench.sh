#!/usr/bin/env bash
# What replication costs, side by side in one session on three brokers of this machine:
# librdkafka producing 1 KiB messages in big batches (up to 1000 per request) to a
# 3-partition topic with replication factor 1 or 3 and acks=1 or acks=all (acks=all is
# idempotent), alternating the four settings for ROUNDS rounds so a noisy host hits each
# alike; then end-to-end latency (produce to consume: a consumer sees a message once it
# is below the high watermark) at RATE msgs/s for each setting. Every broker runs with
# one core and the default `flush = per-append`. With TMPFS=1 the data directories are on
# a tmpfs (needs root): what the replication protocol costs without the disk.
#
# The same four settings also run through loadgen's own lean client (`kafka-lean`) on a
# 1-partition topic (it talks to one leader), a client that uses a fraction of
# librdkafka's CPU: what is left is the brokers' own cost. Each run also records the CPU
# seconds of all three brokers (from /proc) and of loadgen.
#
# usage: [TMPFS=1] scripts/replication-bench.sh OUT_DIR [MESSAGES] [ROUNDS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR [MESSAGES] [ROUNDS] [RATE]}
messages=${2:-200000}
rounds=${3:-2}
rate=${4:-2000}
tmpfs=${TMPFS:-0}
cargo build --release --locked -p server -p loadgen
mkdir -p "$out"
root=$(mktemp -d /tmp/replication-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait || true
  if [ "$tmpfs" = 1 ]; then umount -l "$root" || true; fi
  rm -rf "$root"
}
trap cleanup EXIT
if [ "$tmpfs" = 1 ]; then
  mount -t tmpfs -o size=8g tmpfs "$root"
  storage=tmpfs
else
  storage=$(df --output=source "$root" | tail -1)
fi
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
dirty=$(git diff --quiet HEAD || echo ' (with uncommitted changes)')
{
  echo "commit: $(git rev-parse --short HEAD)$dirty"
  echo "machine: $(nproc) vCPU, $(uname -r), $(awk '/MemTotal/ {print int($2/1024/1024) " GiB"}' /proc/meminfo)"
  echo "brokers: 3 processes on 127.0.0.1, --cores 1 each, flush = per-append, data on $storage"
  echo "command: TMPFS=$tmpfs scripts/replication-bench.sh $out $messages $rounds $rate"
} >"$out/how.txt"
brokers_cpu() { # CPU seconds of the three brokers so far
  local ticks=0
  for p in "${pids[@]}"; do ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$ticks $(getconf CLK_TCK)" | awk '{printf "%.2f", $1 / $2}'
}
run() { # label rf acks round [target partitions]
  local target=${5:-kafka} partitions=${6:-3} before after
  before=$(brokers_cpu)
  /usr/bin/time -f '%U %S' -o "$out/$1-round$4.client-cpu" \
    target/release/loadgen --kafka 127.0.0.1:9191 --replication-factor "$2" --kafka-acks "$3" \
    produce --target "$target" --mode durable --messages "$messages" --size 1024 --batch 1000 \
    --linger-ms 5 --partitions "$partitions" --partitioner per-batch --no-verify \
    --out "$out/$1-round$4" >"$out/$1-round$4.txt" 2>&1
  after=$(brokers_cpu)
  echo "$before $after" | awk '{printf "%.2f\n", $2 - $1}' >"$out/$1-round$4.brokers-cpu"
}
latency() { # label rf acks
  target/release/loadgen --kafka 127.0.0.1:9191 --replication-factor "$2" --kafka-acks "$3" \
    latency --target kafka --mode durable --rate "$rate" --duration 10 --warmup 2000 --size 1024 \
    --partitions 3 --out "$out/latency-$1" >"$out/latency-$1.txt" 2>&1
}
for round in $(seq 1 "$rounds"); do
  run rf1-acks1 1 1 "$round"
  run rf1-acksall 1 all "$round"
  run rf3-acks1 3 1 "$round"
  run rf3-acksall 3 all "$round"
  run lean-rf1-acks1 1 1 "$round" kafka-lean 1
  run lean-rf1-acksall 1 all "$round" kafka-lean 1
  run lean-rf3-acks1 3 1 "$round" kafka-lean 1
  run lean-rf3-acksall 3 all "$round" kafka-lean 1
done
latency rf1-acks1 1 1
latency rf1-acksall 1 all
latency rf3-acks1 3 1
latency rf3-acksall 3 all
summary="$out/summary.md"
echo "| setting | round | msgs/s | MB/s | 3 brokers CPU s | client CPU s |" >"$summary"
echo "|---|---:|---:|---:|---:|---:|" >>"$summary"
for f in "$out"/rf*-round*.txt "$out"/lean-*-round*.txt; do
  name=$(basename "$f" .txt)
  row=$(grep '^| produce |' "$f" | head -1)
  client=$(awk '{printf "%.2f", $1 + $2}' "$out/$name.client-cpu")
  echo "| ${name%-round*} | ${name##*-round} | $(echo "$row" | cut -d'|' -f5 | tr -d ' ') | $(echo "$row" | cut -d'|' -f6 | tr -d ' ') | $(cat "$out/$name.brokers-cpu") | $client |" >>"$summary"
done
{
  echo
  echo "End to end at $rate msgs/s, produce to consume (consumers read below the high watermark):"
  echo
  echo "| setting | p50 ms | p99 ms | p99.9 ms | max ms |"
  echo "|---|---:|---:|---:|---:|"
} >>"$summary"
for f in "$out"/latency-*.txt; do
  name=$(basename "$f" .txt)
  row=$(grep '^| latency |' "$f" | head -1)
  echo "| ${name#latency-} | $(echo "$row" | cut -d'|' -f7 | tr -d ' ') | $(echo "$row" | cut -d'|' -f8 | tr -d ' ') | $(echo "$row" | cut -d'|' -f9 | tr -d ' ') | $(echo "$row" | cut -d'|' -f10 | tr -d ' ') |" >>"$summary"
done
cat "$summary"
