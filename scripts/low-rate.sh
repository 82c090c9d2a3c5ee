#!/usr/bin/env bash
# Broker CPU per message and end-to-end latency at a modest rate (#16's low-rate figures):
# loadgen's latency experiment (one 200-byte message per produce request, a consumer
# long-polling the same partition, open loop at RATE msgs/s for SECONDS, acks=0 as the
# paper's mode) against each broker binary given, in rounds that alternate the binaries so
# that they share the machine's noise. Each run starts a fresh broker (BROKER_FLUSH=interval,
# as scripts/paper-run.sh) on a fresh data directory, and reads every message back.
# Usage: scripts/low-rate.sh OUT_DIR LABEL=BROKER_BINARY... [apache-kafka]
#   apache-kafka: also Apache Kafka, as started by `scripts/kafka.sh start paper` (left
#   running between runs: a long-lived JVM), through the same two clients.
#   env: ROUNDS (3), RATE (10000), SECONDS_PER_RUN (20), TARGETS ("kafka-lean kafka"),
#        CORES (all), LOADGEN (target/release/loadgen, built when absent),
#        PROFILE=1: in round 1, a 5 s `perf record` (cpu-clock, DWARF stacks) of each of
#        our brokers from the 5th second, drawn as OUT_DIR/flame-LABEL-TARGET.svg with
#        inferno (`cargo install inferno`); needs perf and root
# Writes OUT_DIR/runs.tsv (one line per run) and OUT_DIR/summary.md (medians).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR LABEL=BROKER_BINARY...}
shift
[[ $# -ge 1 ]] || { echo "usage: $0 OUT_DIR LABEL=BROKER_BINARY..." >&2; exit 2; }
rounds=${ROUNDS:-3}
rate=${RATE:-10000}
seconds=${SECONDS_PER_RUN:-20}
targets=${TARGETS:-"kafka-lean kafka"}
loadgen=${LOADGEN:-target/release/loadgen}
[[ -x $loadgen ]] || cargo build --release --locked -p loadgen
cores_flag=()
[[ -n ${CORES:-} ]] && cores_flag=(--cores "$CORES")
mkdir -p "$out"
messages=$((rate * seconds))
{
  echo "# how: scripts/low-rate.sh $out $*"
  echo "# commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown); kernel $(uname -r); $(nproc) cpus ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# rate $rate msgs/s, $messages messages per run (the first $rate not measured), rounds $rounds, cores ${CORES:-all}"
  printf 'round\tbroker\ttarget\tmsgs_per_s\tp50_ms\tp99_ms\tp999_ms\tbroker_cpu_s\tbroker_us_per_msg\tclient_cpu_s\tverified\n'
} >"$out/runs.tsv"
for round in $(seq 1 "$rounds"); do
  for target in $targets; do
    for spec in "$@"; do
      if [[ $spec == apache-kafka ]]; then
        label=apache-kafka
        result=$("$loadgen" latency --target "apache-$target" --rate "$rate" --batch 1 \
          --linger-ms 0 --messages "$messages" --warmup "$rate" --quiet \
          --apache-kafka 127.0.0.1:29092 2>&1 || true)
      else
        label=${spec%%=*}
        bin=${spec#*=}
        data=$(mktemp -d /tmp/low-rate.XXXXXX)
        BROKER_FLUSH=interval RUST_LOG=warn "$bin" --listen 127.0.0.1:9092 --data-dir "$data" \
          "${cores_flag[@]}" >"$data.log" 2>&1 &
        broker=$!
        for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.1; done
        profiler=
        if [[ ${PROFILE:-} == 1 && $round == 1 ]]; then
          (sleep 5 && perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$broker" \
            -o "$data.perf" -- sleep 5 >/dev/null 2>&1) &
          profiler=$!
        fi
        result=$("$loadgen" latency --target "$target" --rate "$rate" --batch 1 --linger-ms 0 \
          --messages "$messages" --warmup "$rate" --quiet --kafka 127.0.0.1:9092 2>&1 || true)
        if [[ -n $profiler ]]; then
          wait "$profiler" || true
          perf script -i "$data.perf" 2>/dev/null | inferno-collapse-perf \
            | inferno-flamegraph --title "$label broker, $target, $rate msgs/s" \
            >"$out/flame-$label-$target.svg" || true
          rm -f "$data.perf"
        fi
        kill -TERM "$broker" 2>/dev/null || true
        wait "$broker" 2>/dev/null || true
        rm -rf "$data" "$data.log"
      fi
      row=$(grep -E '^\| latency \|' <<<"$result" | head -1)
      line=$(grep -E 'latency: client CPU' <<<"$result" | head -1)
      if [[ -z $row || -z $line ]]; then
        echo "run failed ($label, $target):" >&2
        echo "$result" >&2
        exit 1
      fi
      # | latency | target | mode | msgs/s | MB/s | p50 | p99 | p99.9 | max | client CPU | broker CPU | messages | verified |
      IFS='|' read -r _ _ _ _ msgs _ p50 p99 p999 _ client broker_cpu _ verified <<<"$row"
      per_msg=$(awk -v c="$broker_cpu" -v n="$messages" 'BEGIN { printf "%.1f", c * 1e6 / n }')
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$label" "$target" \
        $msgs $p50 $p99 $p999 $broker_cpu "$per_msg" $client "$(echo $verified)" >>"$out/runs.tsv"
      echo "round $round $label $target: broker $per_msg us/msg, p50 $(echo $p50) ms, p99 $(echo $p99) ms"
    done
  done
done
# Medians per broker and target.
{
  echo "| broker | target | runs | broker CPU µs/msg (median) | p50 ms (median) | p99 ms (median) | p99.9 ms (median) |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  awk -F'\t' '!/^#/ && $1 != "round" { key = $2 "\t" $3; if (!(key in n)) keys[++k] = key; n[key]++; cpu[key, n[key]] = $9; p50[key, n[key]] = $5; p99[key, n[key]] = $6; p999[key, n[key]] = $7 }
    function median(arr, key, count,   i, j, t, v) {
      for (i = 1; i <= count; i++) v[i] = arr[key, i] + 0
      for (i = 1; i <= count; i++) for (j = i + 1; j <= count; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      return count % 2 ? v[(count + 1) / 2] : (v[count / 2] + v[count / 2 + 1]) / 2
    }
    END { for (i = 1; i <= k; i++) { key = keys[i]; split(key, parts, "\t"); printf "| %s | %s | %d | %.1f | %.2f | %.2f | %.2f |\n", parts[1], parts[2], n[key], median(cpu, key, n[key]), median(p50, key, n[key]), median(p99, key, n[key]), median(p999, key, n[key]) } }' "$out/runs.tsv"
} >"$out/summary.md"
cat "$out/summary.md"
