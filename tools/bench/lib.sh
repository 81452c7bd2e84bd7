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
  wrk -t"$threads" -c"$conc" -d"${dur}s" --timeout 10s --latency "$url" >"$RAW/$name.txt" 2>&1 || true
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
