#!/usr/bin/env bash
# Load benchmark: direct, sluice (normal features on), sluice minimal (one
# backend, no sticky key), nginx and haproxy, interleaved in one run, each
# pinned the same way: the system under test on CPU 0, wrk (or h2load) and
# the backend on CPU 1. Reports req/s, p50/p99, CPU µs per request of the
# proxy process and the ratios to nginx and haproxy (medians over REPS).
# Each round starts one target later than the one before: the target run
# first in a round was measured up to 20 % slower, whichever it was (seen
# with sluice and sluice minimal swapped), so with REPS a multiple of the
# number of targets (the defaults: five and five) each takes every place
# once; other counts spread the first place as evenly as they can.
# With BOTH=1 (default) each round also runs `h1-2cores`: nothing pinned,
# two proxy workers (sluice's default on two cores, nginx worker_processes 2,
# haproxy nbthread 2) sharing both cores with wrk (2 threads) and the backend.
#
#   benches/load.sh                      # REPS=5 DURATION=10 CONNS="64 256" H2=1
#   REPS=2 DURATION=5 benches/load.sh    # quicker, noisier
#   SLUICE_B=/path/to/other/sluice TARGETS="sluice sluice-b nginx" benches/load.sh
#                                        # A/B: another build of sluice, same config
#
# Loopback only; every load run is bounded by DURATION; every process it
# starts is stopped by PID on exit. Installs nginx, haproxy, wrk and h2load
# (Debian packages) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
REPS=${REPS:-5}; DURATION=${DURATION:-10}; WARMUP=${WARMUP:-2}; CONNS=${CONNS:-64 256}; H2=${H2:-1}; BOTH=${BOTH:-1}
TARGETS=${TARGETS:-direct sluice sluice-minimal nginx haproxy}
PORT=18080; H2PORT=18081; BPORT=19000; APORT=19901
OUT=${OUT:-target/bench-load/$(date +%Y%m%d-%H%M%S)}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)

need nginx nginx; need haproxy haproxy; need wrk wrk; need h2load nghttp2-client; need taskset util-linux
cargo build -q --release --bin sluice --example bench_backend
SLUICE=target/release/sluice; BACKEND=target/release/examples/bench_backend


cat >"$OUT/sluice.yaml" <<YAML
listeners: [{ addr: "127.0.0.1:$PORT" }, { addr: "127.0.0.1:$H2PORT" }]
admin: { addr: "127.0.0.1:$APORT" }
routes:
$(sluice_route "$BPORT")
YAML
cat >"$OUT/sluice-minimal.yaml" <<YAML
listeners: [{ addr: "127.0.0.1:$PORT" }, { addr: "127.0.0.1:$H2PORT" }]
admin: { addr: "127.0.0.1:$APORT" }
routes:
  - name: bench
    backends: [{ name: only, url: "http://127.0.0.1:$BPORT" }]
YAML
nginx_config "$OUT" "$BPORT" "listen 127.0.0.1:$PORT reuseport; listen 127.0.0.1:$H2PORT http2 reuseport;" >"$OUT/nginx.conf"
cat >"$OUT/haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:$PORT
    bind 127.0.0.1:$H2PORT proto h2
    default_backend be
backend be
    server s1 127.0.0.1:$BPORT
CONF
sed 's/^worker_processes 1;/worker_processes 2;/' "$OUT/nginx.conf" >"$OUT/nginx2.conf"
sed 's/^    nbthread 1$/    nbthread 2/' "$OUT/haproxy.cfg" >"$OUT/haproxy2.cfg"
# wrk prints one machine-readable line: requests, duration, p50, p99 (µs), errors, non-2xx.
cat >"$OUT/report.lua" <<'LUA'
done = function(s, lat, req)
  local e = s.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\n", s.requests, s.duration,
    lat:percentile(50), lat:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
LUA

ticks() { local t=0 p; for p in $1 $(pgrep -P "$1" || true); do t=$((t + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat"))); done; echo "$t"; }

taskset -c 1 "$BACKEND" "127.0.0.1:$BPORT" >"$OUT/backend.log" 2>&1 & BPID=$!; PIDS+=("$BPID")
wait_backend "$BPORT" "$OUT/backend.log"

start() {  # start TARGET [CPUS]: sets SUT (the pid charged for CPU) and HP (the port)
  HP=$PORT
  local pin="taskset -c ${2:-0}" two=""
  [ "${2:-0}" = "0-1" ] && two=2
  case $1 in
    direct) SUT=$BPID; HP=$BPORT; return ;;
    sluice) $pin "$SLUICE" --log-format json run --config "$OUT/sluice.yaml" --watch-interval 0s >>"$OUT/sluice.log" 2>&1 & ;;
    sluice-b) $pin "${SLUICE_B:?SLUICE_B names the other sluice binary}" --log-format json run --config "$OUT/sluice.yaml" --watch-interval 0s >>"$OUT/sluice.log" 2>&1 & ;;
    sluice-minimal) $pin "$SLUICE" --log-format json run --config "$OUT/sluice-minimal.yaml" --watch-interval 0s >>"$OUT/sluice.log" 2>&1 & ;;
    nginx) $pin nginx -p "$OUT/" -c "$OUT/nginx$two.conf" >>"$OUT/nginx.log" 2>&1 & ;;
    haproxy) $pin haproxy -db -f "$OUT/haproxy$two.cfg" >>"$OUT/haproxy.log" 2>&1 & ;;
  esac
  SUT=$!; PIDS+=("$SUT"); wait_port "$PORT"
}
stop() { [ "$1" = direct ] || { kill "$SUT"; wait "$SUT" 2>/dev/null || true; sleep 0.3; }; }

echo "rep,proto,conns,target,requests,duration_us,p50_us,p99_us,errors,non2xx,sut_ticks,clk_tck" >"$OUT/results.csv"
run() {  # run REP PROTO CONNS TARGET
  local rep=$1 proto=$2 c=$3 t=$4 out t0 t1 line
  if [ "$proto" = h1-2cores ]; then
    [ "$t" = direct ] && return 0
    taskset -a -p -c 0-1 "$BPID" >/dev/null
    start "$t" 0-1
    taskset -c 0-1 wrk -t2 -c"$c" -d"${WARMUP}s" "http://127.0.0.1:$HP/" >/dev/null
    t0=$(ticks "$SUT")
    out=$(taskset -c 0-1 wrk -t2 -c"$c" -d"${DURATION}s" -s "$OUT/report.lua" "http://127.0.0.1:$HP/")
    t1=$(ticks "$SUT")
    line=$(echo "$out" | awk '/^RESULT/{print $2","$3","$4","$5","$6","$7}')
    taskset -a -p -c 1 "$BPID" >/dev/null
    stop "$t"
    echo "$rep,$proto,$c,$t,$line,$((t1 - t0)),$(getconf CLK_TCK)" | tee -a "$OUT/results.csv"
    return 0
  fi
  start "$t"
  [ "$t" = direct ] && taskset -a -p -c 0 "$BPID" >/dev/null
  if [ "$proto" = h1 ]; then
    taskset -c 1 wrk -t1 -c"$c" -d"${WARMUP}s" "http://127.0.0.1:$HP/" >/dev/null
    t0=$(ticks "$SUT")
    out=$(taskset -c 1 wrk -t1 -c"$c" -d"${DURATION}s" -s "$OUT/report.lua" "http://127.0.0.1:$HP/")
    t1=$(ticks "$SUT")
    line=$(echo "$out" | awk '/^RESULT/{print $2","$3","$4","$5","$6","$7}')
  else
    local hp=$H2PORT; [ "$t" = direct ] && hp=$BPORT
    taskset -c 1 h2load -t1 -c"$c" -m10 -D "$WARMUP" "http://127.0.0.1:$hp/" >/dev/null
    t0=$(ticks "$SUT")
    out=$(taskset -c 1 h2load -t1 -c"$c" -m10 -D "$DURATION" "http://127.0.0.1:$hp/")
    t1=$(ticks "$SUT")
    line=$(echo "$out" | awk '/^requests:/{r=$8; bad=$10+$12} /^finished in/{d=int($3*1000000)}
      /^time for request:/{v=$6; if (v ~ /ms$/) v*=1000; else if (v ~ /us$/) v+=0; else v*=1000000; m=int(v)}
      END{print r","d","m",,0,"bad}')
  fi
  [ "$t" = direct ] && taskset -a -p -c 1 "$BPID" >/dev/null
  stop "$t"
  echo "$rep,$proto,$c,$t,$line,$((t1 - t0)),$(getconf CLK_TCK)" | tee -a "$OUT/results.csv"
}

read -ra ALL <<<"$TARGETS"
[ "${#ALL[@]}" -gt 0 ] || { echo "TARGETS names no target" >&2; exit 2; }
for rep in $(seq "$REPS"); do
  k=$(( (rep - 1) % ${#ALL[@]} ))
  ORDER="${ALL[*]:k} ${ALL[*]:0:k}"
  for c in $CONNS; do for t in $ORDER; do run "$rep" h1 "$c" "$t"; done; done
  if [ "$H2" = 1 ]; then for t in $ORDER; do run "$rep" h2 64 "$t"; done; fi
  if [ "$BOTH" = 1 ]; then for t in $ORDER; do run "$rep" h1-2cores 256 "$t"; done; fi
done
python3 benches/summarize.py "$OUT/results.csv" | tee "$OUT/summary.md"
