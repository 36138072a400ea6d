#!/usr/bin/env bash
# Where the proxy core's time goes, the kernel's share included: callgrind
# (instructions.sh) counts only user-space instructions, and on loopback
# most of a proxy's time is spent in the kernel's TCP path. perf samples
# CPU 0 (a software clock, so it works without hardware counters) while
# h2load or wrk drives the proxy pinned there, as in load.sh, with the
# backend and the load on CPU 1. Reports:
#   - the shares of CPU 0: the proxy's user code, its kernel time, idle;
#   - system calls per request, counted by the kernel's tracepoints;
#   - the heaviest kernel paths (inclusive) and user functions (self).
#
#   benches/profile.sh                    # sluice, HTTP/2 (h2load 64 x 10 streams)
#   H2=0 benches/profile.sh               # HTTP/1.1 (wrk, 64 connections)
#   PEER=nginx benches/profile.sh         # the same for nginx, configured as in load.sh
#   DURATION=10 CONNS=256 OUT=dir benches/profile.sh
#
# Needs perf (Debian's linux-perf, installed when missing) and a kernel that
# lets root sample (perf_event_paranoid); says so and stops otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
H2=${H2:-1}; DURATION=${DURATION:-10}; CONNS=${CONNS:-64}; PEER=${PEER:-}
PORT=18580; BPORT=19500; APORT=19905
OUT=${OUT:-target/bench-profile/$(date +%Y%m%d-%H%M%S)}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
need perf linux-perf; need h2load nghttp2-client; need wrk wrk; need taskset util-linux
case $PEER in
  "") ;;
  nginx) need nginx nginx ;;
  *) echo "PEER names no known peer: '$PEER' (nginx is the one)" >&2; exit 2 ;;
esac
perf stat -e cpu-clock true >/dev/null 2>&1 || { echo "perf cannot sample here (perf_event_paranoid: $(cat /proc/sys/kernel/perf_event_paranoid))" >&2; exit 1; }
cargo build -q --release --bin sluice --example bench_backend

taskset -c 1 target/release/examples/bench_backend "127.0.0.1:$BPORT" >"$OUT/backend.log" 2>&1 & PIDS+=("$!")
wait_backend "$BPORT" "$OUT/backend.log"
prior=()
if [ "$PEER" = nginx ]; then
  # nginx 1.22 has no prior-knowledge h2c on an HTTP/1.1 listener.
  h2=""; [ "$H2" = 1 ] && h2=" http2" && prior=(--http2-prior-knowledge)
  nginx_config "$OUT" "$BPORT" "listen 127.0.0.1:$PORT$h2;" >"$OUT/nginx.conf"
  taskset -c 0 nginx -p "$OUT/" -c "$OUT/nginx.conf" >"$OUT/target.log" 2>&1 & PIDS+=("$!")
  name=nginx
else
  sluice_config "$PORT" "$APORT" "$BPORT" >"$OUT/sluice.yaml"
  taskset -c 0 target/release/sluice run --config "$OUT/sluice.yaml" --watch-interval 0s >"$OUT/target.log" 2>&1 & PIDS+=("$!")
  name=sluice
fi
wait_port "$PORT" "${prior[@]}"

# load SECONDS [COMMAND PREFIX...]: drives the proxy; prints the requests done.
load() {
  local secs=$1; shift
  if [ "$H2" = 1 ]; then
    "$@" taskset -c 1 h2load -t1 -c"$CONNS" -m10 -D "$secs" "http://127.0.0.1:$PORT/" >"$OUT/load.txt" 2>&1
    awk '/^requests:/{print $8}' "$OUT/load.txt"
  else
    "$@" taskset -c 1 wrk -t1 -c"$CONNS" -d"${secs}s" "http://127.0.0.1:$PORT/" >"$OUT/load.txt" 2>&1
    awk '/requests in/{print $1}' "$OUT/load.txt"
  fi
}
load 2 >/dev/null  # warm-up: connections open, pools filled

calls=sendto,recvfrom,read,write,readv,writev,sendmsg,recvmsg,epoll_wait,epoll_pwait,epoll_ctl,futex
events=$(echo "$calls" | sed 's/\([a-z_]*\)/syscalls:sys_enter_\1/g'),sched:sched_switch
if perf stat -e "$events" true >/dev/null 2>&1; then
  counted=$(load "$DURATION" perf stat -e "$events" -C 0 -x, -o "$OUT/syscalls.csv" --)
else
  counted=0; echo "(this kernel has no system call tracepoints for perf)" >"$OUT/syscalls.csv"
fi
sampled=$(load "$DURATION" perf record -q -e cpu-clock -C 0 -g -o "$OUT/perf.data" --)
proto=HTTP/1.1; [ "$H2" = 1 ] && proto="HTTP/2, 10 streams a connection"
# head closes its pipe early: not a failure.
set +o pipefail
report() { perf report -i "$OUT/perf.data" --stdio "$@" 2>/dev/null; }
{
  echo "# $name, $proto, $CONNS connections"
  echo
  echo "## CPU 0, sampled for ${DURATION}s ($sampled requests): shares by process and object"
  report --no-children --sort comm,dso -g none | awk '/^ +[0-9.]+%/{printf "%8s  %s %s\n", $1, $2, $3}' | head -8
  echo
  echo "## system calls on CPU 0 per request (a run of its own: $counted requests)"
  if [ "$counted" -gt 0 ] 2>/dev/null; then
    awk -F, -v n="$counted" '$3 ~ /:/ && $1+0 > 0 {sub(/.*:(sys_enter_)?/, "", $3); printf "%8.3f  %s\n", $1/n, $3}' "$OUT/syscalls.csv"
  else
    cat "$OUT/syscalls.csv"
  fi
  echo
  echo "## heaviest kernel paths (inclusive share of CPU 0)"
  report --children --sort sym -g none | awk '/\[k\]/{print}' | head -30
  echo
  echo "## heaviest functions (self share of CPU 0)"
  report --no-children --sort dso,sym -g none | awk '/^ +[0-9.]+%/{print}' | head -40
} >"$OUT/summary.txt"
cat "$OUT/summary.txt"
