#!/usr/bin/env bash
# How the broker scales with cores: for each core count N, a fresh broker on N pinned cores
# (CPUs 0..N-1) and loadgen's lean Kafka client pinned to the CPUs above them, producing
# (acks=0, batch 50) with N producers into 2N partitions (each batch split over all
# partitions, then each batch whole to one), then N consumers draining a backlog of the
# same size; MESSAGES per core, so each run lasts about as long. Every run
# reads its messages back (loadgen's check).
# Needs at least 2x the largest N in CPUs: the scaling figures in results/ come from a
# 16-CPU machine.
# Usage: scripts/core-scaling.sh OUT_DIR [MESSAGES_PER_CORE] [CORE_COUNTS]
#   BIN=DIR takes broker and loadgen from DIR; without it they are built into target/release.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR [MESSAGES_PER_CORE] [CORE_COUNTS]}
per_core=${2:-2000000}
counts=${3:-"1 2 4 8"}
bin=${BIN:-target/release}
if [[ -z ${BIN:-} ]]; then
  cargo build --release --locked -p server --bin broker
  cargo build --release --locked -p loadgen
fi
cpus=$(nproc)
mkdir -p "$out"
{
  echo "commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
  echo "kernel: $(uname -r)"
  echo "cpus: $cpus ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))"
  echo "memory: $(grep MemTotal /proc/meminfo | awk '{print $2/1048576 " GiB"}')"
  echo "io_uring_disabled: $(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 'not present')"
  echo "messages per run: $per_core x 200 B per broker core"
} >"$out/machine.txt"
cat "$out/machine.txt"
port=19192
broker='' data=''
# A failed run must not leave its broker running or its data behind.
trap '[[ -n $broker ]] && kill -TERM "$broker" 2>/dev/null; [[ -n $data ]] && rm -rf "$data"' EXIT
for n in $counts; do
  if (( 2 * n > cpus )); then
    echo "skipping $n cores: $cpus CPUs cannot hold the broker and its clients apart" >&2
    continue
  fi
  data=$(mktemp -d /tmp/scaling-broker.XXXXXX)
  BROKER_FLUSH=interval RUST_LOG=warn taskset -c "0-$((n - 1))" "$bin/broker" \
    --listen "127.0.0.1:$port" --cores "$n" --data-dir "$data" >"$out/broker-$n.log" 2>&1 &
  broker=$!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  clients="$n-$((cpus - 1))"
  messages=$((per_core * n))
  for run in produce:per-message produce:per-batch consume:per-batch; do
    workload=${run%%:*} partitioner=${run#*:}
    taskset -c "$clients" "$bin/loadgen" --quiet --kafka "127.0.0.1:$port" "$workload" \
      --target kafka-lean --messages "$messages" --batch 50 --producers "$n" --consumers "$n" \
      --partitions $((2 * n)) --partitioner "$partitioner" \
      --out "$out/$workload-$partitioner-$n" | tail -n 2
  done
  kill -TERM "$broker"
  wait "$broker" || true
  rm -rf "$data"
  broker='' data=''
  port=$((port + 1))
done
