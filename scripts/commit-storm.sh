#!/usr/bin/env bash
# OffsetCommit throughput and p99 from 100 committers, and a produce probe's p99 alone
# and during the commit storm (`loadgen commits`), for each broker binary given, one
# after the other in one run, each on a fresh data directory with the default settings.
#
#   scripts/commit-storm.sh OUT_DIR BROKER [BROKER...]
#
# Writes OUT_DIR/commits-N.json (committers back to back) and commits-paced-N.json
# (COMMIT_RATE commits/s in all, default 2000) per binary, in the order given.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1; shift
mkdir -p "$out"
cargo build --release -q -p loadgen
source scripts/lib/broker.sh
trap stop_broker EXIT
n=0
for broker in "$@"; do
  n=$((n + 1))
  data=$(mktemp -d)
  start_broker per-append "$data" "$out/broker-$n.log"
  echo "== $broker"
  # Back to back for the throughput; then paced, below saturation, for the stall.
  target/release/loadgen commits --committers "${COMMITTERS:-100}" --seconds "${SECONDS_PER_PHASE:-10}" \
    --out "$out/commits-$n.json"
  target/release/loadgen commits --committers "${COMMITTERS:-100}" --seconds "${SECONDS_PER_PHASE:-10}" \
    --commit-rate "${COMMIT_RATE:-2000}" --out "$out/commits-paced-$n.json"
  stop_broker
  rm -rf "$data"
done
