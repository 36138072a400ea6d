# Shared by the benchmark scripts: sourced, not run.

# need COMMAND PACKAGE: installs the Debian package when the command is missing.
need() { command -v "$1" >/dev/null || { echo "installing $2"; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }

# Every process a script starts goes into PIDS and is stopped on exit.
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# wait_port PORT [CURL_ARGS...]: until something answers HTTP there (30 s
# at most); CURL_ARGS for a listener that speaks only h2c, say.
wait_port() {
  local port=$1; shift
  for _ in $(seq 300); do curl -s -o /dev/null --max-time 1 "$@" "http://127.0.0.1:$port/" && return 0; sleep 0.1; done
  echo "nothing answers on $port" >&2; return 1
}

# wait_backend PORT LOG: until the backend just started (the last of PIDS)
# answers on PORT; fails, naming LOG, when it exited instead (a port left
# taken by an earlier run would otherwise answer in its place).
wait_backend() {
  local pid=${PIDS[-1]}
  wait_port "$1"
  sleep 0.2
  kill -0 "$pid" 2>/dev/null || { echo "the backend did not start (port $1 taken?): see $2" >&2; exit 1; }
}

# sluice_route BACKEND_PORT: the benchmarked route, with sluice's normal
# features on: two weighted backends and a sticky header.
sluice_route() {
  cat <<YAML
  - name: bench
    backends:
      - { name: stable, url: "http://127.0.0.1:$1", weight: 90 }
      - { name: canary, url: "http://127.0.0.1:$1", weight: 10 }
    sticky: { header: x-user-id }
YAML
}

# sluice_config PORT ADMIN_PORT BACKEND_PORT: one listener, the admin API
# and the benchmarked route.
sluice_config() {
  cat <<YAML
listeners: [{ addr: "127.0.0.1:$1" }]
admin: { addr: "127.0.0.1:$2" }
routes:
$(sluice_route "$3")
YAML
}

# nginx_config DIR BACKEND_PORT LISTEN [MAIN]: the nginx every benchmark
# measures, configured for its best: upstream keepalive, no access log.
# LISTEN holds the listen directives; MAIN more main-context ones.
nginx_config() {
  cat <<CONF
worker_processes 1; ${4:-}daemon off; pid $1/nginx.pid; error_log $1/nginx.err warn; worker_rlimit_nofile 20000;
events { worker_connections 8192; }
http {
  access_log off; keepalive_requests 1000000; keepalive_timeout 60s;
  client_body_temp_path $1/nginx-body; proxy_temp_path $1/nginx-proxy;
  upstream backend { server 127.0.0.1:$2; keepalive 512; keepalive_requests 1000000; keepalive_timeout 60s; }
  server {
    $3
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
}
