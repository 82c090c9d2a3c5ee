# Sourced by the measurement scripts: our broker on 127.0.0.1:9092, started and stopped
# around each run (needs $broker, the binary), and the row of loadgen's table.

broker_pid=

# start_broker FLUSH DATA_DIR LOG_FILE: starts it and waits until it takes connections.
start_broker() {
  BROKER_FLUSH=$1 RUST_LOG=warn "$broker" --listen 127.0.0.1:9092 --data-dir "$2" >"$3" 2>&1 &
  broker_pid=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.1; done
}

# stop_broker: a clean stop (SIGTERM), waited for; nothing when none runs.
stop_broker() {
  if [[ -n $broker_pid ]]; then
    kill -TERM "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=
  fi
}

# loadgen_row NAME OUTPUT WHAT: the `| NAME |` row of loadgen's table in OUTPUT; when
# there is none the run failed: says so with WHAT and OUTPUT, and returns 1 (call it as
# `row=$(loadgen_row ...) || exit 1`).
loadgen_row() {
  local row
  row=$(grep -E "^\| $1 \|" <<<"$2" | head -1)
  if [[ -z $row ]]; then
    echo "run failed ($3):" >&2
    echo "$2" >&2
    return 1
  fi
  echo "$row"
}
