#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) in build-fuzz/ with clang-14 and
# runs each for a bounded time on a copy of its seed corpus (the repo's
# corpus never grows). Prints executions and coverage per target; exits 1 if
# any target crashed, leaked or timed out (the reproducer is kept under
# build-fuzz/findings/<target>/).
#
# Usage: tools/fuzz.sh [--seconds N] [--build-only] [target...]
#   targets: envelope_fuzz headers_fuzz auth_fuzz (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=30
build_only=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds)
      seconds="${2:?--seconds needs a number}"
      shift 2
      ;;
    --build-only)
      build_only=1
      shift
      ;;
    -h | --help)
      sed -n '2,10p' "$0"
      exit 0
      ;;
    -*)
      echo "fuzz.sh: unknown option $1" >&2
      exit 2
      ;;
    *)
      targets+=("$1")
      shift
      ;;
  esac
done
all=(envelope_fuzz headers_fuzz auth_fuzz)
if [ ${#targets[@]} -eq 0 ]; then targets=("${all[@]}"); fi
for t in "${targets[@]}"; do
  case " ${all[*]} " in
    *" $t "*) ;;
    *)
      echo "fuzz.sh: unknown target $t (one of: ${all[*]})" >&2
      exit 2
      ;;
  esac
done

# clang and its runtime (libFuzzer, sanitizers), like install-deps.sh does.
missing=()
for p in clang-14 libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "fuzz.sh: installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTUNNEL_BUILD_TESTS=OFF \
  -DTUNNEL_BUILD_FUZZERS=ON >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]}"
if [ "$build_only" -eq 1 ]; then exit 0; fi

failed=0
for t in "${targets[@]}"; do
  work="build-fuzz/corpus/$t"
  findings="build-fuzz/findings/$t"
  rm -rf "$work"
  mkdir -p "$work" "$findings"
  cp -r "tests/fuzz/corpus/$t/." "$work/"
  dict=()
  if [ -f "tests/fuzz/$t.dict" ]; then dict=("-dict=tests/fuzz/$t.dict"); fi
  log="build-fuzz/$t.log"
  echo "== $t: ${seconds}s on $(find "$work" -type f | wc -l) seeds"
  set +e
  "build-fuzz/tests/fuzz/$t" "$work" "${dict[@]}" -max_total_time="$seconds" \
    -timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
    -artifact_prefix="$findings/" >"$log" 2>&1
  rc=$?
  set -e
  # The last status line (#N DONE/pulse cov: ft: corp: exec/s:) and stats.
  status="$(grep -aE '^#[0-9]+' "$log" | tail -1)"
  execs="$(LC_ALL=C sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  rate="$(LC_ALL=C sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
  echo "   $status"
  echo "   execs=${execs:-?} exec/s=${rate:-?} rc=$rc"
  if [ "$rc" -ne 0 ]; then
    echo "fuzz.sh: $t FAILED (see $log; reproducer in $findings/)" >&2
    grep -aE 'ERROR|SUMMARY|==[0-9]+==' "$log" | head -20 >&2 || true
    failed=1
  fi
done
exit "$failed"
