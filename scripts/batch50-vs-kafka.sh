#!/usr/bin/env bash
# The paper's producer at batch 50 (acks=0, 200-byte messages, one partition) against our
# broker and Apache Kafka with the same client, in rounds that alternate them so that
# they share the machine's noise, with more messages than `loadgen paper`'s 1,000,000
# (a run there lasts under a second, too short for a stable CPU figure).
# Our broker: BROKER_BINARY (default target/release/broker), fresh data directory per run,
# flushing as FLUSH says: `interval` (default; once a second, as scripts/paper-run.sh) or
# `none` (the kernel writes back, as Kafka's default: its writeback CPU then falls to the
# kernel's flusher threads, as Kafka's does, instead of to our fdatasync calls).
# Apache Kafka: left running, as started by `scripts/kafka.sh start paper` (start it first).
# Usage: scripts/batch50-vs-kafka.sh OUT_DIR [MESSAGES] [ROUNDS]
#   env: TARGETS ("kafka kafka-lean"), BROKER_BINARY, FLUSH (interval),
#        DROP_CACHES=1: sync and drop the page cache before each run (needs root), so that
#        each run starts from the same memory state (the cost of a page-cache write on
#        this VM varies several fold with it)
# Writes OUT_DIR/<broker>-<target>-round<N>.txt (loadgen's report) and OUT_DIR/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR [MESSAGES] [ROUNDS]}
messages=${2:-5000000}
rounds=${3:-3}
targets=${TARGETS:-"kafka kafka-lean"}
broker_bin=${BROKER_BINARY:-target/release/broker}
flush=${FLUSH:-interval}
[[ -x target/release/loadgen ]] || cargo build --release --locked -p loadgen
mkdir -p "$out"
pid=
data=
trap 'if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null; fi; if [ -n "$data" ]; then rm -rf "$data" "$data.log"; fi' EXIT
{
  echo "# how: scripts/batch50-vs-kafka.sh $out $messages $rounds (TARGETS=\"$targets\", BROKER_BINARY=$broker_bin, FLUSH=$flush, DROP_CACHES=${DROP_CACHES:-})"
  echo "# commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown); kernel $(uname -r); $(nproc) cpus; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| round | client | broker | msgs/s | broker CPU s | broker CPU µs/msg |"
  echo "|---:|---|---|---:|---:|---:|"
} >"$out/summary.md"
settle() {
  if [[ ${DROP_CACHES:-} == 1 ]]; then
    sync
    echo 3 >/proc/sys/vm/drop_caches
  fi
}
row() { # report-file round client broker
  local line rate cpu
  line=$(grep '^| producer, batch 50 |\|^| produce |' "$1" | head -1)
  rate=$(echo "$line" | cut -d'|' -f5 | tr -d ' ')
  cpu=$(echo "$line" | cut -d'|' -f12 | tr -d ' ')
  echo "| $2 | $3 | $4 | $rate | $cpu | $(awk -v c="$cpu" -v m="$messages" 'BEGIN { printf "%.2f", c * 1e6 / m }') |" >>"$out/summary.md"
}
for round in $(seq 1 "$rounds"); do
  for target in $targets; do
    settle
    data=$(mktemp -d /tmp/batch50.XXXXXX)
    BROKER_FLUSH=$flush RUST_LOG=warn "$broker_bin" --listen 127.0.0.1:9092 --data-dir "$data" \
      >"$data.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.1; done
    report="$out/ours-$target-round$round.txt"
    target/release/loadgen produce --target "$target" --batch 50 --messages "$messages" \
      --quiet >"$report" 2>&1
    kill -TERM "$pid"
    wait "$pid" || true
    pid=
    rm -rf "$data" "$data.log"
    data=
    row "$report" "$round" "$target" ours
    settle
    report="$out/apache-kafka-$target-round$round.txt"
    target/release/loadgen produce --target "apache-$target" --batch 50 --messages "$messages" \
      --quiet >"$report" 2>&1
    row "$report" "$round" "$target" "Apache Kafka"
  done
done
cat "$out/summary.md"
