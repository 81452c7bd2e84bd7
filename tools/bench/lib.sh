# Shared by the benchmark scripts (sourced): waiting on output, reading
# /proc, and running wrk. run_wrk writes its raw output under $RAW and runs
# for $DUR seconds unless told otherwise.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_line() {  # FILE REGEX SECONDS
  local deadline=$((SECONDS + $3))
  until grep -Eq "$2" "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "bench: timeout waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1; }
    sleep 0.05
  done
  grep -Em1 "$2" "$1"
}
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Context switches of every live thread of process $1 (the process's own
# status line counts its main thread only).
ctx_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches/{s+=$2} END{print s}'; }
TICK=$(getconf CLK_TCK)

# Peak RSS during a transfer: reset the kernel's high-water mark
# (clear_refs 5), run it, read VmHWM. Exact, no sampling.
reset_peak() { echo 5 >"/proc/$1/clear_refs"; }
peak_kb() { awk '/^VmHWM/{print $2}' "/proc/$1/status"; }

# run_wrk NAME CONC URL -> "rps p50_ms p99_ms MiBps errors requests"
to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v+0} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000} else print v }'; }
to_mib() { awk -v v="$1" 'BEGIN{ if (v ~ /GB$/) {sub(/GB/,"",v); print v*1024} else if (v ~ /MB$/) {sub(/MB/,"",v); print v+0} else if (v ~ /KB$/) {sub(/KB/,"",v); print v/1024} else {sub(/B/,"",v); print v/1048576} }'; }
run_wrk() {
  local name=$1 conc=$2 url=$3 dur=${4:-$DUR} threads=2
  [ "$conc" -lt 2 ] && threads=1
  # WRK_HEADER: one extra request header ("Name: value"), if set.
  wrk -t"$threads" -c"$conc" -d"${dur}s" --timeout 10s --latency \
    ${WRK_HEADER:+-H "$WRK_HEADER"} "$url" >"$RAW/$name.txt" 2>&1 || true
  local f="$RAW/$name.txt"
  local rps p50 p99 tr errs reqs
  rps=$(awk '/^Requests\/sec/{print $2}' "$f")
  p50=$(to_ms "$(awk '$1=="50%"{print $2}' "$f")")
  p99=$(to_ms "$(awk '$1=="99%"{print $2}' "$f")")
  tr=$(to_mib "$(awk '/^Transfer\/sec/{print $2}' "$f")")
  errs=$(awk '/Socket errors/{gsub(",","");s=$4+$6+$8+$10} /Non-2xx/{n=$5} END{print s+n+0}' "$f")
  reqs=$(awk '/requests in/{print $1}' "$f")
  echo "$rps $p50 $p99 $tr $errs $reqs"
}


# bench_setup [TARGET...]: installs the load tools and the build's packages,
# and builds the three binaries (Release) plus the extra targets.
bench_setup() {
  local need=() p
  for p in wrk nginx-light gnuplot-nox curl; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    local SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
  fi
  bash tools/install-deps.sh >/dev/null
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build -j2 --target gateway-tunnel agent-tunnel tunnelctl "$@" >/dev/null
}

# bench_workdir NAME: results in $OUT (raw outputs in $RAW) under
# results/NAME-<time>/, scratch files in $W; on exit the processes listed in
# `pids` are stopped and $W removed.
bench_workdir() {
  OUT="$ROOT/results/$1-$(date -u +%Y%m%dT%H%M%SZ)"
  RAW="$OUT/raw"
  mkdir -p "$RAW"
  W=$(mktemp -d "${TMPDIR:-/tmp}/tunnel-$1.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}

# start_nginx: an nginx origin serving $W/www on $ORIGIN and an nginx reverse
# proxy to it on $PROXY (one worker each way, keep-alive upstream: the floor
# for any proxy), with room for held connections. Sets ORIGIN and PROXY.
start_nginx() {
  ORIGIN=$(free_port); PROXY=$(free_port)
  cat >"$W/nginx.conf" <<NGINX
worker_processes 1;
worker_rlimit_nofile 40000;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 30000; }
http {
  access_log off;
  sendfile on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 256; }
  server { listen 127.0.0.1:$ORIGIN; root $W/www; }
  server {
    listen 127.0.0.1:$PROXY;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
  nginx -c "$W/nginx.conf" -p "$W" -g 'daemon off;' 2>"$RAW/nginx.err" &
  pids+=($!)
}

# start_100b_origin: nginx (start_nginx) serving a 100-byte file as /100b.
start_100b_origin() {
  mkdir -p "$W/www"
  head -c 100 /dev/urandom >"$W/www/100b"
  chmod -R a+rX "$W"  # nginx workers run as www-data
  start_nginx
}

# start_tunnel GATEWAY_BIN MAX_CONCURRENT [GATEWAY FLAGS...] -- [--to SPEC...]:
# gateway-tunnel (plaintext, port 0) and agent "bench" with the agent flags
# after "--" (the agent run under $AGENT_WRAP and the gateway under $GW_WRAP
# if set, e.g. "heaptrack -o FILE"; the agent binary is $AGENT_BIN if set,
# else the build's); waits
# until the agent is connected and nginx answers.
# Sets GW, AG (pids), GRPC and GWHTTP (addresses).
start_tunnel() {
  local gw_bin=$1 max=$2 gw_flags=() ag_flags=()
  shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do gw_flags+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  ag_flags=("$@")
  build/tools/tunnelctl token issue --id bench --credentials "$W/creds.txtpb" >"$W/issued" 2>/dev/null
  local token secret
  token=$(awk '/^token:/{print $2}' "$W/issued"); secret=$(awk '/^secret:/{print $2}' "$W/issued")
  ${GW_WRAP:-} "$gw_bin" --insecure --admin-addr "" --grpc-addr 127.0.0.1:0 \
    --http-addr 127.0.0.1:0 --ops-addr 127.0.0.1:0 --credentials "$W/creds.txtpb" \
    --log-level warning "${gw_flags[@]}" >"$W/gw.out" 2>"$RAW/gateway.err" &
  GW=$!; pids+=($GW)
  GRPC=$(wait_line "$W/gw.out" '^grpc ' 10 | awk '{print $2}')
  GWHTTP=$(wait_line "$W/gw.out" '^http ' 10 | awk '{print $2}')
  TUNNEL_SECRET="$secret" ${AGENT_WRAP:-} "${AGENT_BIN:-build/agent/agent-tunnel}" connect --gateway "$GRPC" \
    --id bench --token "$token" --insecure --max-concurrent "$max" \
    --log-level warning "${ag_flags[@]}" >"$W/agent.out" 2>"$RAW/agent.err" &
  AG=$!; pids+=($AG)
  # The agent prints every tunnel's URLs at once, once it is accepted.
  wait_line "$W/agent.out" '/t/bench/' 20 >/dev/null
  # Wait for nginx too.
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$ORIGIN/100b" && break; sleep 0.05; done
}
