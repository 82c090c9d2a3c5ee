#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS (default 60) from its committed seeds
# (fuzz/corpus-seeds/<target>) plus what earlier runs found (fuzz/corpus/<target>, not
# committed), after replaying every input that once crashed (fuzz/regressions/<target>).
# Prints the executions of each target and fails if any target crashes, leaks, times
# out or runs out of memory; the input that did it lands in fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); stable Rust runs it with
# RUSTC_BOOTSTRAP=1, as here.
#   FUZZ_SANITIZER=none|address  (default address: AddressSanitizer, optimized build)
#   FUZZ_DEV=1                   unoptimized build: builds in a third of the time, runs
#                                several times slower (CI uses it with FUZZ_SANITIZER=none)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(front_door batch batch_mutated recovery)
fi
export RUSTC_BOOTSTRAP=1
build=(--sanitizer "${FUZZ_SANITIZER:-address}")
if [ "${FUZZ_DEV:-0}" = 1 ]; then
  build+=(--dev)
fi

cargo fuzz build "${build[@]}"
status=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  if [ -d "regressions/$t" ]; then
    # -runs=0: run each input of the given directories once, then stop.
    if ! cargo fuzz run "${build[@]}" "$t" "regressions/$t" -- -runs=0 >"artifacts/$t/regressions.log" 2>&1; then
      tail -40 "artifacts/$t/regressions.log"
      summary+=("$t: a regression input crashes again")
      status=1
      continue
    fi
  fi
  log="artifacts/$t/run.log"
  set +e
  cargo fuzz run "${build[@]}" "$t" "corpus/$t" "corpus-seeds/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=512 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  if [ "$rc" -ne 0 ]; then
    tail -60 "$log"
    crash=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | cut -d' ' -f5)
    summary+=("$t: FAILED after ${execs:-?} executions (${rate:-?}/s); input: ${crash:-see $log}")
    if [ -n "${crash:-}" ] && [ -f "$crash" ]; then
      echo "crashing input of $t (base64): $(base64 -w0 "$crash")"
    fi
    status=1
  else
    summary+=("$t: ${execs:-?} executions in ${secs}s (${rate:-?}/s), coverage ${cov:-?}, no crash")
  fi
done
echo "== fuzz summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
exit "$status"
