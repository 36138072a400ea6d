#!/usr/bin/env bash
# A/B of two sluice builds, closer than load.sh's rounds can tell: both
# run side by side on CPU 0 (normal features on, as in load.sh) and are
# loaded alternately from CPU 1 for DURATION seconds each, the order
# flipped every pair, so both see the machine's slow minutes alike.
# Prints each pair's req/s and the ratio A/B, then the median ratio.
#
#   A=target/release/sluice B=/path/to/other/sluice benches/ab.sh
#   PAIRS=8 DURATION=4 MODE=h2 ...   # MODE: h2 (h2load, 64 x 10 streams) or h1 (wrk, 256 connections)
#   MODE=both ...                    # h1 on both cores: nothing pinned, two workers each,
#                                    # wrk -t2 -c64 (load.sh's h1-2cores)
#
# Loopback only; every load is bounded by DURATION; every process it starts
# is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
A=${A:-target/release/sluice}; B=${B:?B names the other sluice binary}
PAIRS=${PAIRS:-8}; DURATION=${DURATION:-4}; MODE=${MODE:-h2}
PORT_A=18380; PORT_B=18381; BPORT=19300
OUT=${OUT:-target/bench-ab/$(date +%Y%m%d-%H%M%S)}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
need wrk wrk; need h2load nghttp2-client; need taskset util-linux
cargo build -q --release --bin sluice --example bench_backend
SUT_CPUS=0; LOAD_CPUS=1
[ "$MODE" = both ] && { SUT_CPUS=0-1; LOAD_CPUS=0-1; }
taskset -c "$LOAD_CPUS" target/release/examples/bench_backend "127.0.0.1:$BPORT" >"$OUT/backend.log" 2>&1 & PIDS+=("$!")
wait_backend "$BPORT" "$OUT/backend.log"
sluice_config "$PORT_A" 19981 "$BPORT" >"$OUT/a.yaml"
sluice_config "$PORT_B" 19982 "$BPORT" >"$OUT/b.yaml"
taskset -c "$SUT_CPUS" "$A" --log-format json run --config "$OUT/a.yaml" --watch-interval 0s >"$OUT/a.log" 2>&1 & PIDS+=("$!")
taskset -c "$SUT_CPUS" "$B" --log-format json run --config "$OUT/b.yaml" --watch-interval 0s >"$OUT/b.log" 2>&1 & PIDS+=("$!")
wait_port "$PORT_A"; wait_port "$PORT_B"
load() {
  if [ "$MODE" = h2 ]; then
    taskset -c 1 h2load -c 64 -m 10 -D "$DURATION" "http://127.0.0.1:$1/" | awk '/^finished/{print int($4)}'
  elif [ "$MODE" = both ]; then
    taskset -c 0-1 wrk -t2 -c64 -d"${DURATION}s" "http://127.0.0.1:$1/" | awk '/Requests\/sec/{print int($2)}'
  else
    taskset -c 1 wrk -t1 -c256 -d"${DURATION}s" "http://127.0.0.1:$1/" | awk '/Requests\/sec/{print int($2)}'
  fi
}
load "$PORT_A" >/dev/null; load "$PORT_B" >/dev/null   # warm-up
echo "pair a_rps b_rps a/b" | tee "$OUT/pairs.txt"
for i in $(seq "$PAIRS"); do
  if [ $((i % 2)) = 1 ]; then a=$(load "$PORT_A"); b=$(load "$PORT_B"); else b=$(load "$PORT_B"); a=$(load "$PORT_A"); fi
  if [ "${a:-0}" -le 0 ] || [ "${b:-0}" -le 0 ]; then echo "pair $i: a load measured nothing (A: '$a', B: '$b')" >&2; exit 1; fi
  echo "$i $a $b $(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.3f", a/b}')" | tee -a "$OUT/pairs.txt"
done
awk 'NR>1{print $4}' "$OUT/pairs.txt" | sort -n |
  awk '{r[NR]=$1} END{m=(NR%2)?r[(NR+1)/2]:(r[NR/2]+r[NR/2+1])/2; printf "median A/B %.3f over %d pairs\n", m, NR}' | tee -a "$OUT/pairs.txt"
