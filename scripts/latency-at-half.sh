#!/usr/bin/env bash
# End-to-end latency at half of each broker's own measured maximum (#16): for every target,
# first the most it takes of the latency experiment's shape (one message per produce
# request, 200 bytes, acks=0 as the paper's mode), then `loadgen latency` offered half of
# that, so that each broker is compared at the same relative load rather than at one rate
# that is easy for one and a struggle for another.
# Usage: scripts/latency-at-half.sh OUT_DIR [TARGET...]
#   TARGETs: kafka-lean kafka apache-kafka-lean apache-kafka (the default: all four).
#   Ours is started here (release build, BROKER_FLUSH=interval as scripts/paper-run.sh, a
#   fresh data directory per target); Apache Kafka must already run
#   (`scripts/kafka.sh start paper`).
#   env: ROUNDS (2), MAX_MESSAGES (300000: the maximum's run), SECONDS_PER_RUN (20: the
#        latency run), LOADGEN (target/release/loadgen), BROKER (target/release/broker)
# Writes OUT_DIR/runs.tsv, OUT_DIR/summary.md (medians per target) and charts of the
# medians (p50.svg, p99.svg, cpu-per-msg.svg).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR [TARGET...]}
shift
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(kafka-lean kafka apache-kafka-lean apache-kafka)
rounds=${ROUNDS:-2}
max_messages=${MAX_MESSAGES:-300000}
seconds=${SECONDS_PER_RUN:-20}
loadgen=${LOADGEN:-target/release/loadgen}
broker=${BROKER:-target/release/broker}
[[ -x $loadgen ]] || cargo build --release --locked -p loadgen
[[ -x $broker ]] || cargo build --release --locked -p server --bin broker
mkdir -p "$out"
# shellcheck source=scripts/lib/broker.sh
source scripts/lib/broker.sh
data=
stop_ours() {
  stop_broker
  if [[ -n $data ]]; then rm -rf "$data" "$data.log"; data=; fi
}
trap stop_ours EXIT
start_ours() {
  data=$(mktemp -d /tmp/latency-half.XXXXXX)
  start_broker interval "$data" "$data.log"
}
{
  echo "# how: scripts/latency-at-half.sh $out ${targets[*]}"
  echo "# commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown); kernel $(uname -r); $(nproc) cpus ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# maximum: loadgen produce --batch 1 --linger-ms 0 --messages $max_messages; then loadgen latency at half of it for $seconds s (the first second not measured)"
  printf 'round\ttarget\tmax_msgs_per_s\toffered\treached\tp50_ms\tp99_ms\tp999_ms\tbroker_cpu_s\tbroker_us_per_msg\tverified\n'
} >"$out/runs.tsv"
for round in $(seq 1 "$rounds"); do
  for target in "${targets[@]}"; do
    [[ $target == apache-* ]] || start_ours
    result=$("$loadgen" produce --target "$target" --batch 1 --linger-ms 0 \
      --messages "$max_messages" --no-verify --quiet 2>&1 || true)
    row=$(loadgen_row produce "$result" "maximum, $target") || exit 1
    max=$(cut -d'|' -f5 <<<"$row" | tr -d ' ')
    rate=$((max / 2))
    messages=$((rate * seconds))
    result=$("$loadgen" latency --target "$target" --rate "$rate" --batch 1 --linger-ms 0 \
      --messages "$messages" --warmup "$rate" --quiet 2>&1 || true)
    stop_ours
    row=$(loadgen_row latency "$result" "latency, $target at $rate msgs/s") || exit 1
    # | latency | target | mode | msgs/s | MB/s | p50 | p99 | p99.9 | max | client CPU | broker CPU | messages | verified |
    IFS='|' read -r _ _ _ _ reached _ p50 p99 p999 _ _ cpu _ verified <<<"$row"
    per_msg=$(awk -v c="$cpu" -v n="$messages" 'BEGIN { printf "%.1f", c * 1e6 / n }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$max" "$rate" \
      $reached $p50 $p99 $p999 $cpu "$per_msg" "$(echo $verified)" >>"$out/runs.tsv"
    echo "round $round $target: max $max msgs/s; at $rate: p50 $(echo $p50) ms, p99 $(echo $p99) ms, $per_msg us/msg"
  done
done
{
  echo "| target | runs | maximum msgs/s | offered msgs/s | reached msgs/s | p50 ms | p99 ms | p99.9 ms | broker CPU µs/msg |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  awk -F'\t' '!/^#/ && $1 != "round" {
      t = $2; if (!(t in n)) order[++k] = t; n[t]++
      for (c = 3; c <= 10; c++) v[t, c, n[t]] = $c + 0
    }
    function median(t, c, count,   i, j, x, a) {
      for (i = 1; i <= count; i++) a[i] = v[t, c, i]
      for (i = 1; i <= count; i++) for (j = i + 1; j <= count; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
      return count % 2 ? a[(count + 1) / 2] : (a[count / 2] + a[count / 2 + 1]) / 2
    }
    END {
      for (i = 1; i <= k; i++) { t = order[i]
        printf "| %s | %d | %.0f | %.0f | %.0f | %.2f | %.2f | %.2f | %.1f |\n", t, n[t], median(t, 3, n[t]), median(t, 4, n[t]), median(t, 5, n[t]), median(t, 6, n[t]), median(t, 7, n[t]), median(t, 8, n[t]), median(t, 10, n[t]) }
    }' "$out/runs.tsv"
} >"$out/summary.md"
for chart in p50_ms:p50 p99_ms:p99 broker_us_per_msg:cpu-per-msg; do
  python3 scripts/bar-chart.py "$out/runs.tsv" target "${chart%%:*}" \
    "${chart%%:*} at half of each broker's own maximum" "$out/${chart#*:}.svg" --log
done
cat "$out/summary.md"
