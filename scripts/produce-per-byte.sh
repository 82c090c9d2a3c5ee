#!/usr/bin/env bash
# What the broker pays per byte (#16's produce-per-byte figures), side by side in one run:
# loadgen's lean client producing (and, as a check, consuming) 1 KiB messages in batches of 1000 (about 1 MiB per
# request, acks=0, the broker on `flush = none` as Kafka's page-cache default) against
#   - dd and fio writing the same payload bytes buffered to a fresh file on the same file
#     system (bs 1 MiB, no sync): the floor for "receive bytes, put them in the page cache";
#   - iperf3 over loopback: the floor for moving bytes between two processes here.
# Each round runs every step once, each after `sync` and `drop_caches` (when writable),
# in an order reversed every other round: on this VM the CPU cost of a page-cache write
# depends on what the memory did just before (free page reporting hands freed pages back
# to the host, and touching them again faults on the host), by up to 5x for the same dd,
# which swamps the differences measured here. Take medians over several rounds.
# Usage: scripts/produce-per-byte.sh OUT_DIR [BROKER_BINARY]
#   env: ROUNDS (5), MESSAGES (3000000 per run), DATA (file system for data and dd/fio:
#        /var/tmp), LOADGEN (target/release/loadgen), IPERF_SECONDS (5)
# Writes OUT_DIR/runs.tsv (one line per step and round), OUT_DIR/summary.md (medians) and
# two charts of the medians (cpu-per-gb.svg, mb-per-s.svg).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR [BROKER_BINARY]}
broker=${2:-target/release/broker}
rounds=${ROUNDS:-5}
messages=${MESSAGES:-3000000}
data_root=${DATA:-/var/tmp}
loadgen=${LOADGEN:-target/release/loadgen}
iperf_seconds=${IPERF_SECONDS:-5}
size=1024
batch=1000
for tool in dd fio iperf3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y fio iperf3)" >&2; exit 2; }
done
[[ -x $broker ]] || cargo build --release --locked -p server
[[ -x $loadgen ]] || cargo build --release --locked -p loadgen
mkdir -p "$out"
work=$(mktemp -d "$data_root/per-byte.XXXXXX")
# shellcheck source=scripts/lib/broker.sh
source scripts/lib/broker.sh
trap 'stop_broker; rm -rf "$work"' EXIT
bytes=$((messages * size))
gb=$(awk -v b="$bytes" 'BEGIN { printf "%.4f", b / 1e9 }')

settle() {
  sync
  if [[ -w /proc/sys/vm/drop_caches ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

# CPU seconds (user + sys, children included) of a command, via /usr/bin/time.
cpu_of() {
  local t
  t=$(/usr/bin/time -f '%U %S %e' "$@" 2>&1 >/dev/null | tail -1)
  awk '{ printf "%.3f %.3f", $1 + $2, $3 }' <<<"$t"
}

{
  echo "# how: scripts/produce-per-byte.sh $out $broker"
  echo "# commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown); kernel $(uname -r); $(nproc) cpus ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')); $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "# data on $(df -h "$work" | awk 'NR==2 {print $1 " (" $6 ")"}') $(findmnt -no FSTYPE -T "$work" 2>/dev/null || true); $messages messages of $size B per broker run ($gb GB of payload), batches of $batch; $(fio --version); $(iperf3 --version | head -1)"
  printf 'round\tstep\tMB_per_s\tcpu_s\tcpu_s_per_GB\tclient_cpu_s\n'
} >"$out/runs.tsv"

step_iperf3() {
  # One stream over loopback, both ends' CPU from iperf3's own report.
  settle
  iperf3 -s -1 -p 5299 >/dev/null 2>&1 &
  server=$!
  sleep 0.5
  json=$(iperf3 -c 127.0.0.1 -p 5299 -t "$iperf_seconds" -J)
  wait "$server" || true
  read -r mbs cpu_pct <<<"$(python3 -c '
import json, sys
j = json.load(sys.stdin)["end"]
c = j["cpu_utilization_percent"]
mbs = j["sum_received"]["bits_per_second"] / 8e6
print("%.1f %.1f" % (mbs, c["host_total"] + c["remote_total"]))' <<<"$json")"
  printf '%s\tiperf3\t%s\t-\t%s\t-\n' "$round" "$mbs" \
    "$(awk -v c="$cpu_pct" -v m="$mbs" 'BEGIN { printf "%.3f", (c / 100) / (m / 1000) }')" >>"$out/runs.tsv"
}

step_file() { # dd|fio: the same payload bytes, buffered, to a fresh file
  local tool=$1 cpu wall mbs
  settle
  if [[ $tool == dd ]]; then
    read -r cpu wall <<<"$(cpu_of dd if=/dev/zero of="$work/dd.bin" bs=1M count=$((bytes / 1048576)))"
    rm -f "$work/dd.bin"
  else
    read -r cpu wall <<<"$(cpu_of fio --name=w --filename="$work/fio.bin" --rw=write --bs=1m \
      --size=$((bytes / 1048576))m --ioengine=psync --end_fsync=0 --output=/dev/null)"
    rm -f "$work/fio.bin"
  fi
  mbs=$(awk -v b="$bytes" -v w="$wall" 'BEGIN { printf "%.1f", b / 1e6 / w }')
  printf '%s\t%s\t%s\t%s\t%s\t-\n' "$round" "$tool" "$mbs" "$cpu" \
    "$(awk -v c="$cpu" -v g="$gb" 'BEGIN { printf "%.3f", c / g }')" >>"$out/runs.tsv"
}

# Runs loadgen against a fresh broker (after `settle`) and appends the row of its table
# for EXPERIMENT (produce|consume) to runs.tsv as STEP, with CPU per GB of payload.
loadgen_step() { # STEP EXPERIMENT loadgen-arguments...
  local step=$1 experiment=$2 result row mbs client cpu
  shift 2
  settle
  start_broker none "$work/data" "$work/broker.log"
  result=$("$loadgen" "$experiment" --target kafka-lean --size $size --batch $batch \
    --messages "$messages" --quiet --kafka 127.0.0.1:9092 "$@" 2>&1 || true)
  stop_broker
  rm -rf "$work/data"
  row=$(loadgen_row "$experiment" "$result" "$step") || exit 1
  # | experiment | target | mode | msgs/s | MB/s | p50 | p99 | p99.9 | max | client CPU | broker CPU | messages | verified |
  IFS='|' read -r _ _ _ _ _ mbs _ _ _ _ client cpu _ <<<"$row"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$step" $mbs $cpu \
    "$(awk -v c="$cpu" -v g="$gb" 'BEGIN { printf "%.3f", c / g }')" $client >>"$out/runs.tsv"
}

# The cost of a page-cache write here depends on what the memory did just before, so the
# order of the steps is reversed every other round.
order=(iperf3 dd broker-1 fio broker-2 consumer)
for round in $(seq 1 "$rounds"); do
  steps=("${order[@]}")
  if ((round % 2 == 0)); then
    steps=()
    for ((i = ${#order[@]} - 1; i >= 0; i--)); do steps+=("${order[i]}"); done
  fi
  for step in "${steps[@]}"; do
    case $step in
      iperf3) step_iperf3 ;;
      dd | fio) step_file "$step" ;;
      broker-*) # that many producers, each on a partition of its own
        n=${step#broker-}
        loadgen_step "broker-${n}p" produce --producers "$n" --partitions "$n" \
          --partitioner per-batch --no-verify ;;
      consumer) # one consumer draining one partition of the same bytes (written first)
        loadgen_step consumer consume ;;
    esac
  done
  echo "round $round done: ${steps[*]}"
done

# Medians per step, and the two ratios #16 asks for.
awk -F'\t' '!/^#/ && $1 != "round" {
    n[$2]++; mb[$2, n[$2]] = $3; per[$2, n[$2]] = $5
    if (!($2 in seen)) { seen[$2] = 1; order[++k] = $2 }
  }
  function median(arr, key, count,   i, j, t, v) {
    for (i = 1; i <= count; i++) v[i] = arr[key, i] + 0
    for (i = 1; i <= count; i++) for (j = i + 1; j <= count; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return count % 2 ? v[(count + 1) / 2] : (v[count / 2] + v[count / 2 + 1]) / 2
  }
  END {
    print "| step | runs | MB/s (median) | CPU s per GB (median) |"
    print "|---|---:|---:|---:|"
    for (i = 1; i <= k; i++) { s = order[i]; m[s] = median(mb, s, n[s]); c[s] = median(per, s, n[s]); printf "| %s | %d | %.1f | %.3f |\n", s, n[s], m[s], c[s] }
    print ""
    if (c["dd"] > 0) printf "- broker CPU per GB, 1 partition / dd: **%.2f**; / fio: %.2f\n", c["broker-1p"] / c["dd"], c["broker-1p"] / c["fio"]
    if (m["iperf3"] > 0) printf "- two producers on two partitions / iperf3 loopback: **%.2f** (%.0f of %.0f MB/s)\n", m["broker-2p"] / m["iperf3"], m["broker-2p"], m["iperf3"]
    if (m["iperf3"] > 0) printf "- one consumer / iperf3 loopback: **%.2f** (%.0f of %.0f MB/s)\n", m["consumer"] / m["iperf3"], m["consumer"], m["iperf3"]
  }' "$out/runs.tsv" >"$out/summary.md"
python3 scripts/bar-chart.py "$out/runs.tsv" step cpu_s_per_GB \
  "CPU seconds per GB of payload: broker against dd, fio, iperf3" "$out/cpu-per-gb.svg"
python3 scripts/bar-chart.py "$out/runs.tsv" step MB_per_s \
  "MB/s of payload: broker against dd, fio, iperf3 loopback" "$out/mb-per-s.svg"
cat "$out/summary.md"
