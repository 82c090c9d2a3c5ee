#!/usr/bin/env bash
# Produce throughput and broker CPU of two broker binaries, side by side in one session:
# kafka-lean at batch 1 and batch 50, the paper's mode (acks=0, flush once a second),
# alternating A and B for ROUNDS rounds on fresh data directories, so that a noisy host
# hits both alike. Build B with `cargo build --release -p server --bin broker` and A the
# same way in a worktree of the commit to compare (`git worktree add /tmp/a COMMIT`).
#
# usage: scripts/ab-produce.sh A_BROKER B_BROKER OUT_DIR [MESSAGES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
a=${1:?usage: $0 A_BROKER B_BROKER OUT_DIR [MESSAGES] [ROUNDS]}
b=${2:?usage: $0 A_BROKER B_BROKER OUT_DIR [MESSAGES] [ROUNDS]}
out=${3:?usage: $0 A_BROKER B_BROKER OUT_DIR [MESSAGES] [ROUNDS]}
messages=${4:-1000000}
rounds=${5:-2}
cargo build --release --locked -p loadgen
mkdir -p "$out"
printf "A: %s\nB: %s\n" "$a" "$b" >"$out/brokers.txt"
pid=
data=
trap 'if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null; fi; if [ -n "$data" ]; then rm -rf "$data" "$data.log"; fi' EXIT
run() { # label binary batch round
  data=$(mktemp -d /tmp/ab-data.XXXXXX)
  BROKER_FLUSH=interval RUST_LOG=warn "$2" --listen 127.0.0.1:9092 --data-dir "$data" \
    >"$data.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.1; done
  target/release/loadgen produce --target kafka-lean --messages "$messages" --batch "$3" \
    --out "$out/$1-batch$3-round$4" >"$out/$1-batch$3-round$4.txt" 2>&1
  kill -TERM "$pid"
  wait "$pid" || true
  pid=
  rm -rf "$data" "$data.log"
  data=
}
for round in $(seq 1 "$rounds"); do
  for batch in 1 50; do
    run a "$a" "$batch" "$round"
    run b "$b" "$batch" "$round"
  done
done
echo "| broker | batch | round | msgs/s | broker CPU s |" >"$out/summary.md"
echo "|---|---:|---:|---:|---:|" >>"$out/summary.md"
for f in "$out"/[ab]-batch*.txt; do
  name=$(basename "$f" .txt)
  row=$(grep '^| produce |' "$f" | head -1)
  rate=$(echo "$row" | cut -d'|' -f5 | tr -d ' ')
  cpu=$(echo "$row" | cut -d'|' -f12 | tr -d ' ')
  IFS=- read -r who batch round <<<"$name"
  echo "| $who | ${batch#batch} | ${round#round} | $rate | $cpu |" >>"$out/summary.md"
done
cat "$out/summary.md"
