#!/usr/bin/env bash
# Two broker binaries side by side on the replication workloads of
# scripts/replication-bench.sh: for each round, each binary in turn runs three brokers
# (--cores 1, flush = per-append) and the same loadgen (this checkout's) produces 1 KiB
# messages in 1000-message batches with acks=all, to RF 1 and to RF 3, through librdkafka
# (3 partitions) and the lean client (1 partition). Alternating the binaries round by
# round lets a noisy host hit both alike. With TMPFS=1 the data is on a tmpfs.
#
# usage: [TMPFS=1] scripts/replication-ab.sh OUT_DIR BROKER_A BROKER_B [MESSAGES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR BROKER_A BROKER_B [MESSAGES] [ROUNDS]}
bins=("${2:?}" "${3:?}")
messages=${4:-500000}
rounds=${5:-3}
tmpfs=${TMPFS:-0}
cargo build --release --locked -p loadgen
mkdir -p "$out"
root=$(mktemp -d /tmp/replication-ab.XXXXXX)
pids=()
stop_brokers() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop_brokers
  if [ "$tmpfs" = 1 ]; then umount -l "$root" || true; fi
  rm -rf "$root"
}
trap cleanup EXIT
[ "$tmpfs" = 1 ] && mount -t tmpfs -o size=8g tmpfs "$root"
{
  echo "commit: $(git rev-parse --short HEAD)"
  echo "A: ${bins[0]} ($(sha256sum "${bins[0]}" | cut -c1-12)); B: ${bins[1]} ($(sha256sum "${bins[1]}" | cut -c1-12))"
  echo "machine: $(nproc) vCPU, $(uname -r)"
  echo "command: TMPFS=$tmpfs scripts/replication-ab.sh $out ${bins[*]} $messages $rounds"
} >"$out/how.txt"
start_brokers() { # binary
  rm -rf "$root"/broker-*
  local voters="1@127.0.0.1:19191,2@127.0.0.1:19192,3@127.0.0.1:19193"
  for id in 1 2 3; do
    BROKER_NODE_ID=$id BROKER_CONTROLLER_LISTEN=127.0.0.1:1919$id \
      BROKER_CONTROLLER_QUORUM_VOTERS=$voters RUST_LOG=warn \
      "$1" --listen 127.0.0.1:919$id --data-dir "$root/broker-$id" --cores 1 \
      >>"$out/broker-$id.log" 2>&1 &
    pids+=($!)
  done
  for port in 9191 9192 9193; do
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  done
  sleep 3 # registrations committed
}
echo "| binary | round | client | RF | msgs/s |" >"$out/summary.md"
echo "|---|---:|---|---:|---:|" >>"$out/summary.md"
for round in $(seq 1 "$rounds"); do
  for b in 0 1; do
    label=$([ "$b" = 0 ] && echo A || echo B)
    start_brokers "${bins[$b]}"
    for rf in 1 3; do
      for client in kafka:3 kafka-lean:1; do
        target=${client%:*} partitions=${client#*:}
        name="$label-round$round-$target-rf$rf"
        target/release/loadgen --kafka 127.0.0.1:9191 --replication-factor "$rf" --kafka-acks all \
          produce --target "$target" --mode durable --messages "$messages" --size 1024 \
          --batch 1000 --linger-ms 5 --partitions "$partitions" --partitioner per-batch \
          --no-verify --out "$out/$name" >"$out/$name.txt" 2>&1
        rate=$(grep '^| produce |' "$out/$name.txt" | head -1 | cut -d'|' -f5 | tr -d ' ')
        echo "| $label | $round | $target | $rf | $rate |" >>"$out/summary.md"
      done
    done
    stop_brokers
  done
done
cat "$out/summary.md"
