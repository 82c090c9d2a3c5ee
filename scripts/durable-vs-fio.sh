#!/usr/bin/env bash
# Durable produce against the disk's own durable write rate (#16), side by side in one run:
# eight producers (loadgen's lean client, durable mode: acks=all, idempotent) on one
# partition of our broker (`flush = per-append`: an fdatasync before acks=all is answered,
# shared by the appends queued together), at batch 1 and batch 50, against fio writing the
# same sizes with an fdatasync after every write (`--fdatasync=1`, one writer): what a
# single writer that syncs each write gets from this disk.
# Usage: scripts/durable-vs-fio.sh OUT_DIR [BROKER_BINARY]
#   env: ROUNDS (3), SECONDS_PER_RUN (10), SIZE (1024 bytes per message), PRODUCERS (8),
#        DATA (file system for the data and fio: /var/tmp), LOADGEN (target/release/loadgen)
# Writes OUT_DIR/runs.tsv, OUT_DIR/summary.md (medians) and a chart of the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR [BROKER_BINARY]}
broker=${2:-target/release/broker}
rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_RUN:-10}
size=${SIZE:-1024}
producers=${PRODUCERS:-8}
loadgen=${LOADGEN:-target/release/loadgen}
command -v fio >/dev/null || { echo "needs fio (apt-get install -y fio)" >&2; exit 2; }
[[ -x $broker ]] || cargo build --release --locked -p server --bin broker
[[ -x $loadgen ]] || cargo build --release --locked -p loadgen
mkdir -p "$out"
work=$(mktemp -d "${DATA:-/var/tmp}/durable-vs-fio.XXXXXX")
# shellcheck source=scripts/lib/broker.sh
source scripts/lib/broker.sh
trap 'stop_broker; rm -rf "$work"' EXIT
{
  echo "# how: scripts/durable-vs-fio.sh $out $broker"
  echo "# commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown); kernel $(uname -r); $(nproc) cpus; data on $(df -h "$work" | awk 'NR==2 {print $1 " (" $6 ")"}') $(findmnt -no FSTYPE -T "$work" 2>/dev/null || true); $(fio --version)"
  echo "# $producers producers on 1 partition, $size-byte messages, $seconds s per run; fio: one writer, --fdatasync=1, bs = one request's records"
  printf 'round\tstep\tmsgs_per_s\tMB_per_s\twrites_per_s\tbroker_cpu_s\n'
} >"$out/runs.tsv"

for round in $(seq 1 "$rounds"); do
  for batch in 1 50; do
    # fio: the disk, one synced write of the same bytes at a time.
    bs=$((size * batch))
    json=$(fio --name=sync --filename="$work/fio.bin" --rw=write --bs="$bs" --size=1g \
      --ioengine=psync --fdatasync=1 --runtime="$seconds" --time_based --output-format=json)
    rm -f "$work/fio.bin"
    read -r writes mbs <<<"$(python3 -c '
import json, sys
w = json.load(sys.stdin)["jobs"][0]["write"]
print("%.0f %.1f" % (w["iops"], w["bw_bytes"] / 1e6))' <<<"$json")"
    printf '%s\tfio-fdatasync-%s\t%s\t%s\t%s\t-\n' "$round" "$bs" \
      "$(awk -v w="$writes" -v b="$batch" 'BEGIN { printf "%.0f", w * b }')" "$mbs" "$writes" >>"$out/runs.tsv"

    # The broker, fresh each run.
    start_broker per-append "$work/data" "$work/broker.log"
    result=$("$loadgen" produce --target kafka-lean --mode durable --size "$size" \
      --batch "$batch" --linger-ms 0 --producers "$producers" --partitions 1 \
      --duration "$seconds" --no-verify --quiet --kafka 127.0.0.1:9092 2>&1 || true)
    stop_broker
    rm -rf "$work/data"
    row=$(loadgen_row produce "$result" "batch $batch") || exit 1
    # | produce | target | mode | msgs/s | MB/s | p50 | p99 | p99.9 | max | client CPU | broker CPU | messages | verified |
    IFS='|' read -r _ _ _ _ msgs mbs _ _ _ _ _ cpu _ <<<"$row"
    printf '%s\tbroker-batch-%s\t%s\t%s\t%s\t%s\n' "$round" "$batch" $msgs $mbs \
      "$(awk -v m="$msgs" -v b="$batch" 'BEGIN { printf "%.0f", m / b }')" $cpu >>"$out/runs.tsv"
    echo "round $round, batch $batch: fio $writes synced writes/s; broker $(echo $msgs) msgs/s"
  done
done

awk -F'\t' '!/^#/ && $1 != "round" {
    s = $2; if (!(s in n)) order[++k] = s; n[s]++
    m[s, n[s]] = $3; mb[s, n[s]] = $4; w[s, n[s]] = $5
  }
  function median(arr, key, count,   i, j, t, v) {
    for (i = 1; i <= count; i++) v[i] = arr[key, i] + 0
    for (i = 1; i <= count; i++) for (j = i + 1; j <= count; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return count % 2 ? v[(count + 1) / 2] : (v[count / 2] + v[count / 2 + 1]) / 2
  }
  END {
    print "| step | runs | msgs/s (median) | MB/s (median) | synced writes or requests/s (median) |"
    print "|---|---:|---:|---:|---:|"
    for (i = 1; i <= k; i++) { s = order[i]; printf "| %s | %d | %.0f | %.1f | %.0f |\n", s, n[s], median(m, s, n[s]), median(mb, s, n[s]), median(w, s, n[s]) }
  }' "$out/runs.tsv" >"$out/summary.md"
python3 scripts/bar-chart.py "$out/runs.tsv" step msgs_per_s \
  "Durable msgs/s: $producers producers (acks=all) against fio write+fdatasync" "$out/msgs-per-s.svg" --log
cat "$out/summary.md"
