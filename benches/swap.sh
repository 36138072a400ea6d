#!/usr/bin/env bash
# Table swaps at load: sluice (one core, pinned like benches/load.sh) serves
# wrk while the admin API changes a route's weights every $EVERY s on a
# 10 000-route table ("swapping"), against the same run with no change
# ("steady"), and against the same client calling GET /healthz at the same
# pace ("polling": what the admin calls themselves cost, with the client on
# the load generator's core), interleaved over $REPS rounds. Reports req/s and
# p50/p99 of each, and how long each weight change took to return.
#
#   benches/swap.sh                       # REPS=5 DURATION=10 ROUTES=10000 EVERY=0.1
#
# Loopback only; bounded by DURATION; every process is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
REPS=${REPS:-5}; DURATION=${DURATION:-10}; ROUTES=${ROUTES:-10000}; EVERY=${EVERY:-0.1}; CONNS=${CONNS:-64}
PORT=18280; BPORT=19200; APORT=19903
OUT=${OUT:-target/bench-swap/$(date +%Y%m%d-%H%M%S)}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
need wrk wrk
cargo build -q --release --bin sluice --example bench_backend


{
  echo "listeners: [{ addr: \"127.0.0.1:$PORT\" }]"
  echo "admin: { addr: \"127.0.0.1:$APORT\" }"
  echo "routes:"
  for i in $(seq 2 "$ROUTES"); do
    echo "  - { name: r$i, match: { host: r$i.example }, backends: [{ name: b, url: \"http://127.0.0.1:$BPORT\" }] }"
  done
  sluice_route "$BPORT"
} >"$OUT/sluice.yaml"
cat >"$OUT/report.lua" <<'LUA'
done = function(s, lat, req)
  io.write(string.format("RESULT %d %d %d %d %d\n", s.requests, s.duration,
    lat:percentile(50), lat:percentile(99), s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout + s.errors.status))
end
LUA
taskset -c 1 target/release/examples/bench_backend "127.0.0.1:$BPORT" >"$OUT/backend.log" 2>&1 & PIDS+=("$!")
wait_backend "$BPORT" "$OUT/backend.log"
taskset -c 0 target/release/sluice --log-format json run --config "$OUT/sluice.yaml" --watch-interval 0s >"$OUT/sluice.log" 2>&1 & PIDS+=("$!")
wait_port "$PORT"

# Changes weights (or, with "healthz", only asks whether sluice is up) every
# EVERY s until DURATION is over, on one keep-alive connection (no process per
# change, so the load generator's core stays quiet); prints each call's time
# in ms.
cat >"$OUT/flip.py" <<'PY'
import http.client, sys, time
port, duration, every, kind = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
end, w = time.monotonic() + duration, 10
while time.monotonic() < end:
    w = 20 if w == 10 else 10
    t0 = time.perf_counter()
    if kind == "healthz":
        conn.request("GET", "/healthz")
    else:
        conn.request("PUT", "/routes/bench/weights", body=f'{{"stable": {100 - w}, "canary": {w}}}',
                     headers={"content-type": "application/json"})
    r = conn.getresponse(); r.read()
    assert r.status == 200, r.status
    print(f"{(time.perf_counter() - t0) * 1000:.2f}", flush=True)
    time.sleep(every)
PY

echo "rep,mode,requests,duration_us,p50_us,p99_us,errors" >"$OUT/results.csv"
: >"$OUT/changes_ms.txt"
for rep in $(seq "$REPS"); do
  for mode in steady polling swapping; do
    taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$PORT/" >/dev/null
    case $mode in
      polling) taskset -c 1 python3 "$OUT/flip.py" "$APORT" "$DURATION" "$EVERY" healthz >/dev/null & FLIP=$! ;;
      swapping) taskset -c 1 python3 "$OUT/flip.py" "$APORT" "$DURATION" "$EVERY" weights >>"$OUT/changes_ms.txt" & FLIP=$! ;;
    esac
    line=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$OUT/report.lua" "http://127.0.0.1:$PORT/" | awk '/^RESULT/{print $2","$3","$4","$5","$6}')
    [ "$mode" = steady ] || wait "$FLIP"
    echo "$rep,$mode,$line" | tee -a "$OUT/results.csv"
  done
done
python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import csv, statistics, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/results.csv")))
med = lambda xs: statistics.median(xs)
print("| mode | runs | req/s | p50 µs | p99 µs | errors |\n|---|---|---|---|---|---|")
for mode in ("steady", "polling", "swapping"):
    rs = [r for r in rows if r["mode"] == mode]
    print(f"| {mode} | {len(rs)} | {med([int(r['requests']) / int(r['duration_us']) * 1e6 for r in rs]):,.0f} | "
          f"{med([int(r['p50_us']) for r in rs]):,.0f} | {med([int(r['p99_us']) for r in rs]):,.0f} | "
          f"{sum(int(r['errors']) for r in rs)} |")
ms = sorted(float(l) for l in open(f"{out}/changes_ms.txt") if l.strip())
if ms:
    print(f"\n{len(ms)} weight changes on the table: median {med(ms):.1f} ms, "
          f"p99 {ms[int(len(ms) * 0.99) - 1]:.1f} ms, max {ms[-1]:.1f} ms (admin call, as its client timed it)")
PY
