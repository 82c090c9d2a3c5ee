#!/usr/bin/env bash
# The disk's own sequential write speed, to put the engine's append benchmarks in
# proportion: buffered writes (page cache, as `flush_none`) and write+fdatasync after
# every write (as `flush_per_append`), at the benchmark's batch sizes, on fresh files.
#
# Usage: scripts/fio-baseline.sh [DIR]   (default: the system temp dir, as the benches)
# Needs fio (apt-get install -y fio). Prints one line per job: MiB/s and writes/s.
set -euo pipefail
dir="${1:-${BENCH_DIR:-${TMPDIR:-/tmp}}}"
work="$(mktemp -d "$dir/fio-baseline.XXXXXX")"
trap 'rm -rf "$work"' EXIT

run() { # name bs size extra...
  local name=$1 bs=$2 size=$3; shift 3
  fio --name="$name" --directory="$work" --rw=write --bs="$bs" --size="$size" \
      --ioengine=psync --runtime=10 --output-format=json "$@" >"$work/$name.json"
  python3 - "$work/$name.json" "$name" "$bs" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]["write"]
print(f"{sys.argv[2]:<28} bs={sys.argv[3]:<5} {job['bw_bytes']/2**20:10.1f} MiB/s {job['iops']:12.0f} writes/s")
PY
  rm -f "$work"/"$name".*.0
}

echo "fio $(fio --version) on $(df -h "$dir" | awk 'NR==2 {print $1}') ($dir), $(date -u +%FT%TZ)"
for bs in 1k 16k 1m; do
  run "buffered_write_$bs" "$bs" 1g
done
for bs in 1k 16k 1m; do
  run "write_fdatasync_$bs" "$bs" 256m --fdatasync=1
done
