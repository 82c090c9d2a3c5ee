#!/usr/bin/env bash
# Shows where fetched bytes travel: consumes the same backlog twice from the broker, with
# zero-copy fetch (io_uring SPLICE, page cache -> pipe -> socket) and with the copying path
# (io_uring READ into a buffer, then SEND), and reports for each run
#   - the consumer's throughput (librdkafka, examples/rdkafka_perf.rs),
#   - the broker's CPU seconds (user, system) while serving it,
#   - the io_uring operations the broker submitted, by opcode (kernel tracepoint
#     io_uring:io_uring_submit_req; needs root and tracefs),
#   - the broker's syscalls (strace -c -f): fetches go through io_uring_enter (a
#     response with at most fetch_inline_max_bytes of records, 64 KiB, would be read
#     with preadv2 and sent with sendmsg instead; a backlog's responses are larger).
#
# Usage: scripts/zero-copy-evidence.sh [MESSAGES] [SIZE]   (default 1000000 x 1024 B)
# Needs: cargo build --release -p server --bin broker --example rdkafka_perf; strace.
set -euo pipefail
cd "$(dirname "$0")/.."
messages="${1:-1000000}"
size="${2:-1024}"
broker=target/release/broker
perf=target/release/examples/rdkafka_perf
port=19192
data="$(mktemp -d)"
tracing=/sys/kernel/tracing
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT

mountpoint -q "$tracing" || mount -t tracefs nodev "$tracing"

start() { # zero_copy
  BROKER_FETCH_ZERO_COPY="$1" "$broker" --listen "127.0.0.1:$port" --data-dir "$data" --cores 1 \
    >"$data.out" 2>"$data.err" &
  pid=$!
  until grep -q "listening" "$data.out" 2>/dev/null; do sleep 0.1; done
}
cpu() { awk '{print $14, $15}' "/proc/$pid/stat"; } # utime stime, in clock ticks

start true
"$perf" "127.0.0.1:$port" evidence "$messages" "$size" 1 1 | grep produce
kill -TERM "$pid"; wait "$pid" || true

for zero_copy in true false; do
  start "$zero_copy"
  echo "== fetch_zero_copy=$zero_copy"
  echo > "$tracing/trace"
  echo "common_pid == $pid || common_pid > $pid" > "$tracing/events/io_uring/io_uring_submit_req/filter" 2>/dev/null || true
  echo 1 > "$tracing/events/io_uring/io_uring_submit_req/enable"
  read -r u0 s0 < <(cpu)
  strace -c -f -q -p "$pid" -o "$data.strace" &
  strace_pid=$!
  sleep 0.5
  "$perf" "127.0.0.1:$port" evidence "$messages" "$size" 1 1 consume
  kill -INT "$strace_pid"; wait "$strace_pid" 2>/dev/null || true
  read -r u1 s1 < <(cpu)
  echo 0 > "$tracing/events/io_uring/io_uring_submit_req/enable"
  tick=$(getconf CLK_TCK)
  echo "broker CPU: user $(echo "scale=2; ($u1-$u0)/$tick" | bc) s, system $(echo "scale=2; ($s1-$s0)/$tick" | bc) s"
  echo "io_uring ops submitted by the broker's threads (opcode: count):"
  grep -o "core-[0-9]*-[0-9]*.*opcode [A-Z_]*" "$tracing/trace" | grep -o "opcode [A-Z_]*" | sort | uniq -c | sort -rn | head -8
  echo "syscalls (strace -c -f, top 6):"
  sed -n '3,8p' "$data.strace"
  kill -TERM "$pid"; wait "$pid" || true
done
