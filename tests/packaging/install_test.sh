#!/usr/bin/env bash
# `cmake --install` into a temporary prefix, then checks the installed tree:
# the binaries run, the systemd units pass `systemd-analyze verify` (with
# no warnings) and start the installed binaries, every TUNNEL_* variable in
# the example env files is a flag the binary knows, and every shared library
# the binaries link comes from packaging/runtime-packages.txt (the list the
# container's runtime stage installs).
# Usage: install_test.sh BUILD_DIR SOURCE_DIR CONFIGURED_BINDIR WITH_GATEWAY
#        [EMULATOR ARGS...]
# A cross build passes its emulator (qemu-aarch64-static -L /): the binaries
# run under it, and the runtime package check, which is about the
# container's (native) image, is left out.
set -uo pipefail
BUILD="$(cd "$1" && pwd)"
SRC="$(cd "$2" && pwd)"
CONFIGURED_BINDIR="$3"
WITH_GATEWAY="$4"
EMULATOR=("${@:5}")
# shellcheck source=../e2e/lib.sh
source "$SRC/tests/e2e/lib.sh"
enter_workdir install_test
PREFIX="$WORK/prefix"

cmake --install "$BUILD" --prefix "$PREFIX" >install.log 2>&1
check "cmake --install succeeds" test $? = 0

binaries=(agent-tunnel tunnelctl)
units=(agent-tunnel.service)
envs=(agent.env agent.txtpb)
if [ "$WITH_GATEWAY" = ON ]; then
  binaries+=(gateway-tunnel)
  units+=(gateway-tunnel.service)
  envs+=(gateway.env gateway.txtpb)
fi

for b in "${binaries[@]}"; do
  check "bin/$b is installed and executable" test -x "$PREFIX/bin/$b"
done
for u in "${units[@]}"; do
  check "lib/systemd/system/$u is installed" \
    test -f "$PREFIX/lib/systemd/system/$u"
done
for e in "${envs[@]}"; do
  check "share/doc/tunnel/examples/$e is installed" \
    test -f "$PREFIX/share/doc/tunnel/examples/$e"
done
check "share/doc/tunnel/README.md is installed" \
  test -f "$PREFIX/share/doc/tunnel/README.md"

# --help of each binary, for the flag names (and proof that it runs).
"${EMULATOR[@]}" "$PREFIX/bin/agent-tunnel" connect --help >agent.help 2>&1
check "installed agent-tunnel runs (connect --help)" test $? = 0
"${EMULATOR[@]}" "$PREFIX/bin/tunnelctl" --help >tunnelctl.help 2>&1
check "installed tunnelctl runs (--help)" test $? = 0
if [ "$WITH_GATEWAY" = ON ]; then
  "${EMULATOR[@]}" "$PREFIX/bin/gateway-tunnel" --help >gateway.help 2>&1
  check "installed gateway-tunnel runs (--help)" test $? = 0
fi

# Each TUNNEL_X_Y (commented-out examples included) names a flag --x-y.
env_names_known() {  # env_names_known ENV_FILE HELP_FILE
  local ok=0 var flag
  for var in $(grep -oE '^#?TUNNEL_[A-Z0-9_]+=' "$1" | tr -d '#='); do
    flag="--$(echo "${var#TUNNEL_}" | tr 'A-Z_' 'a-z-')"
    if ! grep -qE -- "^ *$flag( |$)" "$2"; then
      echo "$1: $var: the binary has no flag $flag" >&2
      ok=1
    fi
  done
  return $ok
}
check "agent.env sets only flags agent-tunnel connect has" \
  env_names_known "$PREFIX/share/doc/tunnel/examples/agent.env" agent.help
if [ "$WITH_GATEWAY" = ON ]; then
  check "gateway.env sets only flags gateway-tunnel has" \
    env_names_known "$PREFIX/share/doc/tunnel/examples/gateway.env" \
    gateway.help
fi

# The example config files parse and every field is a flag: the binaries
# read --config before they check --log-level, so with a bad --log-level
# (which beats the file) they stop at exactly that check, having started
# nothing.
config_parses() {  # config_parses PROGRAM [ARGS...]: exit 2 at --log-level
  local out
  out=$("${EMULATOR[@]}" "$@" --log-level not-a-level 2>&1 >/dev/null)
  [ $? = 2 ] && grep -q -- "--log-level must be" <<<"$out" || {
    echo "$out" >&2
    return 1
  }
}
check "examples/agent.txtpb is a valid agent config" \
  config_parses "$PREFIX/bin/agent-tunnel" connect \
  --config "$PREFIX/share/doc/tunnel/examples/agent.txtpb"
if [ "$WITH_GATEWAY" = ON ]; then
  check "examples/gateway.txtpb is a valid gateway config" \
    config_parses "$PREFIX/bin/gateway-tunnel" \
    --config "$PREFIX/share/doc/tunnel/examples/gateway.txtpb"
fi

# The units start the binaries at the configured prefix. To verify them
# here, point ExecStart at the tree just installed (systemd-analyze checks
# that the command exists) and fail on any warning.
mkdir units
for u in "${units[@]}"; do
  b="${u%.service}"
  check "$u starts $CONFIGURED_BINDIR/$b" \
    grep -qE "^ExecStart=$CONFIGURED_BINDIR/$b( |$)" \
    "$PREFIX/lib/systemd/system/$u"
  sed "s|^ExecStart=$CONFIGURED_BINDIR/|ExecStart=$PREFIX/bin/|" \
    "$PREFIX/lib/systemd/system/$u" >"units/$u"
done
if command -v systemd-analyze >/dev/null; then
  (cd units && systemd-analyze verify "${units[@]}") >verify.out 2>&1
  rc=$?
  cat verify.out
  check "systemd-analyze verify passes" test $rc = 0
  check "and prints no warning" test ! -s verify.out
else
  fail "systemd-analyze is not installed (tools/install-deps.sh installs systemd)"
fi

# Shared libraries: the owner of each directly linked one must be listed.
# One dpkg -S for all of them (it is slow); with merged /usr a library may be
# registered under /lib, /usr/lib or its resolved name.
runtime_ok() {
  local ok=0 b so path p
  : >needed.txt
  for b in "${binaries[@]}"; do
    ldd "$PREFIX/bin/$b" >ldd.txt
    for so in $(readelf -d "$PREFIX/bin/$b" | awk '/NEEDED/{gsub(/[][]/,"",$5); print $5}'); do
      path=$(awk -v s="$so" '$1==s{print $3}' ldd.txt)
      echo "$b $so $path" >>needed.txt
    done
  done
  sort -u needed.txt | while read -r b so path; do
    for p in "$path" "$(readlink -f "$path")" "/usr$path"; do echo "$p"; done
  done | sort -u | xargs dpkg -S 2>/dev/null >owners.txt
  while read -r b so path; do
    pkg=$(awk -v a="$path" -v b="$(readlink -f "$path")" -v c="/usr$path" \
      '{p=$0; sub(/^[^ ]+ /,"",p)} p==a||p==b||p==c{split($1,x,":"); print x[1]; exit}' owners.txt)
    if [ -z "$pkg" ]; then
      echo "$b: $so ($path) belongs to no Debian package" >&2
      ok=1
    elif ! grep -qx "$pkg" "$SRC/packaging/runtime-packages.txt"; then
      echo "$b: $so comes from $pkg, missing in runtime-packages.txt" >&2
      ok=1
    fi
  done <needed.txt
  return $ok
}
if [ ${#EMULATOR[@]} -eq 0 ]; then
  check "runtime-packages.txt covers every linked library" runtime_ok
fi
packages_exist() {  # one apt-cache call: without a binary cache each is slow
  local ok=0 pkg
  # shellcheck disable=SC2046
  apt-cache policy $(grep -v '^#' "$SRC/packaging/runtime-packages.txt") \
    >policy.txt 2>/dev/null
  for pkg in $(grep -v '^#' "$SRC/packaging/runtime-packages.txt"); do
    if ! awk -v p="$pkg:" '$1==p{f=1; next} /^[^ ]/{f=0}
        f && $1=="Candidate:" && $2!="(none)"{found=1} END{exit !found}' \
        policy.txt; then
      echo "runtime-packages.txt: no Debian package $pkg" >&2
      ok=1
    fi
  done
  return $ok
}
check "every package in runtime-packages.txt exists" packages_exist

echo "install_test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
