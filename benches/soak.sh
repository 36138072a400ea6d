#!/usr/bin/env bash
# RSS over a soak at load: sluice (pinned like benches/load.sh, normal
# features on) serves wrk for DURATION seconds; RSS is sampled every EVERY
# seconds. Reports the samples and the growth from the first minute's
# median to the last minute's.
#
#   benches/soak.sh                       # DURATION=600 EVERY=10 CONNS=64
#
# Loopback only; bounded by DURATION; every process is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
DURATION=${DURATION:-600}; EVERY=${EVERY:-10}; CONNS=${CONNS:-64}
PORT=18580; BPORT=19500; APORT=19905
OUT=${OUT:-target/bench-soak/$(date +%Y%m%d-%H%M%S)}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
need wrk wrk; need taskset util-linux
cargo build -q --release --bin sluice --example bench_backend
sluice_config "$PORT" "$APORT" "$BPORT" >"$OUT/sluice.yaml"
taskset -c 1 target/release/examples/bench_backend "127.0.0.1:$BPORT" >"$OUT/backend.log" 2>&1 & PIDS+=("$!")
wait_backend "$BPORT" "$OUT/backend.log"
taskset -c 0 target/release/sluice --log-format json run --config "$OUT/sluice.yaml" --watch-interval 0s >"$OUT/sluice.log" 2>&1 & SUT=$!; PIDS+=("$SUT")
wait_port "$PORT"
taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/" >"$OUT/wrk.txt" & WRK=$!; PIDS+=("$WRK")
echo "seconds,rss_kib" >"$OUT/rss.csv"
start=$(date +%s)
while kill -0 "$WRK" 2>/dev/null; do
  echo "$(( $(date +%s) - start )),$(awk '/^Rss:/{print $2}' "/proc/$SUT/smaps_rollup")" >>"$OUT/rss.csv"
  sleep "$EVERY"
done
python3 - "$OUT" "$EVERY" <<'PY' | tee "$OUT/summary.txt"
import csv, statistics, sys
out, every = sys.argv[1], int(sys.argv[2])
rows = [(int(r["seconds"]), int(r["rss_kib"])) for r in csv.DictReader(open(f"{out}/rss.csv"))]
n = max(1, 60 // every)
first, last = statistics.median(r for _, r in rows[:n]), statistics.median(r for _, r in rows[-n:])
print(f"{len(rows)} samples over {rows[-1][0]} s: first minute {first:,.0f} KiB, last minute {last:,.0f} KiB "
      f"({(last - first) / first * 100:+.1f} %), min {min(r for _, r in rows):,} KiB, max {max(r for _, r in rows):,} KiB")
PY
grep -E "Requests/sec|Socket errors|Non-2xx" "$OUT/wrk.txt" || true
