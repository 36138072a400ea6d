#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: stable
# from run to run whatever else the machine does, so a change to the request
# path can be judged by a count instead of a noisy throughput figure.
# sluice (normal features on: two weighted backends, sticky header, stats,
# Prometheus) serves N keep-alive HTTP/1.1 requests from h2load (16
# connections); counting starts after a warm-up of 2 000 requests. H2=1
# counts HTTP/2 from the client instead (16 connections x 10 streams);
# MINIMAL=1 runs sluice minimal (one backend, no sticky key), so the two
# counts give the cost of the inline work. PEER=nginx counts nginx instead
# (one worker, no master process, upstream keepalive, no access log: the
# configuration of benches/load.sh), under the same load and backend: the
# user-space half of the comparison that load.sh's CPU figures blur with
# the kernel's.
#
#   benches/instructions.sh                 # N=20000, BIN=target/release/sluice
#   H2=1 benches/instructions.sh
#   MINIMAL=1 benches/instructions.sh
#   BIN=/path/to/other/sluice benches/instructions.sh
#   PEER=nginx H2=1 benches/instructions.sh
#   CACHE=1 benches/instructions.sh         # also simulate the caches (slower)
#
# Keeps the profile (callgrind_annotate it to see where the instructions go).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
N=${N:-20000}; H2=${H2:-0}; MINIMAL=${MINIMAL:-0}; PEER=${PEER:-}; PORT=18480; BPORT=19400; APORT=19904
OUT=${OUT:-target/bench-instructions/$(date +%Y%m%d-%H%M%S)}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
need valgrind valgrind; need h2load nghttp2-client; need taskset util-linux
case $PEER in
  "") ;;
  nginx)
    # The peer is measured as configured for the load benchmark, not as
    # sluice minimal or another binary: refused rather than ignored.
    [ "$MINIMAL" = 1 ] || [ -n "${BIN:-}" ] && { echo "PEER=nginx counts nginx; MINIMAL and BIN are sluice's" >&2; exit 2; }
    need nginx nginx ;;
  *) echo "PEER names no known peer: '$PEER' (nginx is the one)" >&2; exit 2 ;;
esac
cargo build -q --release --bin sluice --example bench_backend
BIN=${BIN:-target/release/sluice}
if [ "$MINIMAL" = 1 ]; then
  cat >"$OUT/sluice.yaml" <<YAML
listeners: [{ addr: "127.0.0.1:$PORT" }]
admin: { addr: "127.0.0.1:$APORT" }
routes:
  - name: bench
    backends: [{ name: only, url: "http://127.0.0.1:$BPORT" }]
YAML
else
  sluice_config "$PORT" "$APORT" "$BPORT" >"$OUT/sluice.yaml"
fi
taskset -c 1 target/release/examples/bench_backend "127.0.0.1:$BPORT" >"$OUT/backend.log" 2>&1 & PIDS+=("$!")
wait_backend "$BPORT" "$OUT/backend.log"
cachesim=(); [ "${CACHE:-0}" = 1 ] && cachesim=(--cache-sim=yes)
if [ "$PEER" = nginx ]; then
  # One process, so callgrind sees the worker itself. HTTP/2 needs its own
  # listener: nginx 1.22 has no prior-knowledge h2c on an HTTP/1.1 one.
  h2=""; [ "$H2" = 1 ] && h2=" http2"
  nginx_config "$OUT" "$BPORT" "listen 127.0.0.1:$PORT$h2;" "master_process off; " >"$OUT/nginx.conf"
  BIN=nginx
  target=(nginx -p "$OUT/" -c "$OUT/nginx.conf")
else
  target=("$BIN" run --config "$OUT/sluice.yaml" --watch-interval 0s)
fi
taskset -c 0 valgrind --tool=callgrind "${cachesim[@]}" --callgrind-out-file="$OUT/callgrind.out" \
  "${target[@]}" >"$OUT/target.log" 2>&1 & VG=$!; PIDS+=("$VG")
prior=(); [ "$PEER" = nginx ] && [ "$H2" = 1 ] && prior=(--http2-prior-knowledge)
wait_port "$PORT" "${prior[@]}"
proto=(--h1); [ "$H2" = 1 ] && proto=(-m 10)
taskset -c 1 h2load "${proto[@]}" -n 2000 -c 16 "http://127.0.0.1:$PORT/" >/dev/null
callgrind_control -z "$VG" >/dev/null
taskset -c 1 h2load "${proto[@]}" -n "$N" -c 16 "http://127.0.0.1:$PORT/" | grep -E "^requests:"
callgrind_control -d "$VG" >/dev/null
total=$(awk '/^totals:/{print $2}' "$OUT/callgrind.out.1")
echo "$total instructions for $N requests: $((total / N)) per proxied request ($BIN)" | tee "$OUT/summary.txt"
if [ "${CACHE:-0}" = 1 ]; then
  # Events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw (valgrind's model of this machine's caches).
  awk -v n="$N" '/^totals:/{printf "per request: first-level misses %.0f (instructions %.0f, data %.0f), last-level %.1f\n", ($5+$6+$7)/n, $5/n, ($6+$7)/n, ($8+$9+$10)/n}' \
    "$OUT/callgrind.out.1" | tee -a "$OUT/summary.txt"
fi
