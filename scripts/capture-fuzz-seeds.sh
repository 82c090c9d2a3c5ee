#!/usr/bin/env bash
# Captures real client traffic for the fuzz seed corpora: starts the broker behind
# scripts/capture-frames.py, drives it with librdkafka (klog, which links the rdkafka
# crate's librdkafka 2.12, and kcat, Debian's librdkafka 2.0.2) and kafka-python (its own
# protocol code), all codecs, then has `fuzz/src/bin/seeds.rs` turn the frames into
# fuzz/corpus-seeds/<target>/.
#
# Usage: scripts/capture-fuzz-seeds.sh   (needs kcat and kafka-python: see .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked -p server --bin broker -p cli --bin klog
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
broker_port=$((20000 + RANDOM % 10000))
proxy_port=$((broker_port + 1))
# The raw frames stay (not committed) so that the seeds can be remade without clients.
frames=fuzz/target/captured-frames
rm -rf "$frames"

BROKER_ADVERTISED_PORT=$proxy_port RUST_LOG=warn ./target/debug/broker \
  --listen "127.0.0.1:$broker_port" --data-dir "$work/data" &
python3 scripts/capture-frames.py "$proxy_port" "$broker_port" "$frames" &
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$proxy_port") 2>/dev/null && break
  sleep 0.2
done
bootstrap="127.0.0.1:$proxy_port"
klog() { ./target/debug/klog -b "$bootstrap" "$@"; }

echo "== klog (librdkafka 2.12)"
klog topics create seeds --partitions 3 --config retention.ms=600000 --config segment.bytes=1048576
klog topics list >/dev/null
klog topics describe seeds >/dev/null
seq 1 200 | sed 's/^/key-&:value-&/' | klog produce --topic seeds --key-separator : --header origin=klog
seq 1 20 | klog produce --topic seeds --acks 1
seq 1 20 | klog produce --topic seeds --acks 0
klog consume --topic seeds --from-beginning --group seed-group --max-messages 240 --timeout-ms 5000 >/dev/null
klog groups list >/dev/null
klog groups describe seed-group >/dev/null
klog groups reset-offsets seed-group --topic seeds --to-earliest >/dev/null
klog groups reset-offsets seed-group --topic seeds --to-datetime 0 >/dev/null
klog consume --topic seeds --partition 1 --offset 3 --max-messages 5 --timeout-ms 3000 >/dev/null

echo "== kcat (librdkafka 2.0.2), every codec"
for codec in none gzip snappy lz4 zstd; do
  seq 1 50 | sed "s/^/$codec-&/" | kcat -b "$bootstrap" -P -t "kcat-$codec" -z "$codec" -K- 2>/dev/null ||
    seq 1 50 | kcat -b "$bootstrap" -P -t "kcat-$codec" -z "$codec"
  kcat -b "$bootstrap" -C -t "kcat-$codec" -o beginning -e -q >/dev/null
done
kcat -b "$bootstrap" -L >/dev/null
kcat -b "$bootstrap" -G kcat-group kcat-gzip -o beginning -e -q >/dev/null 2>&1 || true
kcat -b "$bootstrap" -Q -t kcat-zstd:0:0 >/dev/null 2>&1 || true

echo "== kafka-python, every codec, groups, idempotent producer"
python3 server/tests/clients/kafka_python_check.py "$bootstrap" "$work/data"

kill %2 2>/dev/null || true
kill -TERM %1
wait %1 || true
echo "captured $(ls "$frames" | wc -l) distinct frames"
(cd fuzz && cargo run --quiet --release --features seed-tool --bin seeds -- target/captured-frames corpus-seeds)
