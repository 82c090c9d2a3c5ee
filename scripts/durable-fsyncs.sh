#!/usr/bin/env bash
# How many fdatasyncs our broker runs per acks=all produce request in durable mode
# (BROKER_FLUSH=per-append): loadgen's durable producer at batch 1, one and several
# producers on one partition, both Kafka clients. Group commit can only share a sync
# between appends that are queued together; the ratio shows how often that happens.
# Usage: scripts/durable-fsyncs.sh [MESSAGES]   (prints a Markdown table)
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-20000}
cargo build --release --locked -p server --bin broker -p loadgen >&2
data=$(mktemp -d /tmp/durable-fsyncs.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
metrics_port=$(free_port)
BROKER_FLUSH=per-append RUST_LOG=warn target/release/broker --listen "127.0.0.1:$port" \
  --data-dir "$data/data" --metrics-listen "127.0.0.1:$metrics_port" >"$data/broker.log" 2>&1 &
broker=$!
trap 'kill -TERM $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

# Produce requests answered and fdatasyncs run so far, from the broker's own metrics.
counters() {
  python3 - "$metrics_port" <<'EOF'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
values = {}
for line in text.splitlines():
    if line.startswith('broker_request_duration_seconds_count{api="Produce"}'):
        values["requests"] = float(line.split()[-1])
    elif line.startswith("broker_flush_duration_seconds_count"):
        values["syncs"] = float(line.split()[-1])
print(int(values.get("requests", 0)), int(values.get("syncs", 0)))
EOF
}

echo "| client | producers | msgs/s | produce requests | fdatasyncs | syncs per request |"
echo "|---|---:|---:|---:|---:|---:|"
for producers in 1 4; do
  for target in kafka kafka-lean; do
    read -r requests0 syncs0 < <(counters)
    row=$(target/release/loadgen produce --kafka "127.0.0.1:$port" --target "$target" \
      --mode durable --batch 1 --producers "$producers" --partitions 1 \
      --messages "$messages" --quiet | grep '^| produce ')
    read -r requests1 syncs1 < <(counters)
    rate=$(echo "$row" | cut -d'|' -f5 | tr -d ' ')
    requests=$((requests1 - requests0))
    syncs=$((syncs1 - syncs0))
    ratio=$(python3 -c "print(f'{$syncs / max($requests, 1):.2f}')")
    echo "| $target | $producers | $rate | $requests | $syncs | $ratio |"
  done
done
