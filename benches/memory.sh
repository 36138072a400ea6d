#!/usr/bin/env bash
# Memory per client connection: sluice (normal features on) beside nginx
# (one worker, upstream keepalive), each holding N idle keep-alive
# connections (one GET each, then silent) and N connected-but-silent ones,
# for N in $COUNTS. RSS of the whole process tree, upstream pool included.
#
#   benches/memory.sh                 # COUNTS="1000 10000"
#   BIN=/path/to/other/sluice benches/memory.sh
#
# Loopback only; each target is stopped by PID after its measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
COUNTS=${COUNTS:-1000 10000}; TARGETS=${TARGETS:-sluice nginx}
PORT=18180; BPORT=19100; APORT=19902
OUT=${OUT:-target/bench-memory/$(date +%Y%m%d-%H%M%S)}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
need nginx nginx
ulimit -n "$(ulimit -Hn)"
cargo build -q --release --bin sluice --example bench_backend
BIN=${BIN:-target/release/sluice}


cat >"$OUT/sluice.yaml" <<YAML
listeners: [{ addr: "127.0.0.1:$PORT" }]
admin: { addr: "127.0.0.1:$APORT" }
limits: { max_connections: 30000, idle_timeout: 120s, header_read_timeout: 60s }
routes:
$(sluice_route "$BPORT")
YAML
cat >"$OUT/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $OUT/nginx.pid; error_log $OUT/nginx.err warn; worker_rlimit_nofile 40000;
events { worker_connections 30000; }
http {
  access_log off; keepalive_requests 1000000; keepalive_timeout 120s; client_header_timeout 60s;
  client_body_temp_path $OUT/nginx-body; proxy_temp_path $OUT/nginx-proxy;
  upstream backend { server 127.0.0.1:$BPORT; keepalive 512; keepalive_timeout 60s; }
  server {
    listen 127.0.0.1:$PORT reuseport;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
target/release/examples/bench_backend "127.0.0.1:$BPORT" >"$OUT/backend.log" 2>&1 & PIDS+=("$!")
wait_backend "$BPORT" "$OUT/backend.log"
for n in $COUNTS; do for mode in request silent; do for t in $TARGETS; do
  case $t in
    sluice) "$BIN" --log-format json run --config "$OUT/sluice.yaml" --watch-interval 0s >>"$OUT/sluice.log" 2>&1 & ;;
    nginx) nginx -p "$OUT/" -c "$OUT/nginx.conf" >>"$OUT/nginx.log" 2>&1 & ;;
  esac
  pid=$!; PIDS+=("$pid"); wait_port "$PORT"
  echo "$t $(python3 benches/idle_conns.py "$PORT" "$pid" "$n" "$mode")" | tee -a "$OUT/memory.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true; sleep 0.5
done; done; done
