# Shared helpers for the process-level tests (sourced, not run).

passed=0
failed=0
pass() {
  passed=$((passed + 1))
  echo "ok: $1"
}
fail() {
  failed=$((failed + 1))
  echo "FAIL: $1" >&2
}
check() {  # check "description" command...
  local what="$1"
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

# enter_workdir NAME: a fresh temp dir as the working directory; on exit the
# processes listed in `pids` are stopped and the dir removed.
pids=()
enter_workdir() {
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$WORK"' EXIT
  cd "$WORK" || exit 1
}

# issue_token BUILD AGENT_ID: a credential in ./creds.txtpb; sets TOKEN and
# SECRET from tunnelctl's output.
issue_token() {
  "$1/tools/tunnelctl" token issue --id "$2" --credentials creds.txtpb \
    >issued.txt 2>/dev/null
  TOKEN=$(awk '/^token:/{print $2}' issued.txt)
  SECRET=$(awk '/^secret:/{print $2}' issued.txt)
}

# wait_for_line FILE REGEX SECONDS: waits (bounded) until FILE has a line
# matching REGEX and prints the first such line.
wait_for_line() {
  local file="$1" re="$2" deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    if grep -Eq "$re" "$file" 2>/dev/null; then
      grep -Em1 "$re" "$file"
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# start_site: serves site/index.html ("hello from the device") on a free
# port of 127.0.0.1 with Python's http.server in the background (its pid in
# `pids`); sets SVC_PORT.
start_site() {
  mkdir site && echo "hello from the device" >site/index.html
  /usr/bin/python3 -u -m http.server 0 --bind 127.0.0.1 --directory site \
    >svc.out 2>svc.err &
  pids+=($!)
  SVC_PORT=$(wait_for_line svc.out 'port [0-9]+' 10 |
    sed -E 's/.*port ([0-9]+).*/\1/')
  check "local service started" test -n "$SVC_PORT"
}

# wait_for_exit PID SECONDS: waits (bounded) for a child of this shell to
# exit and sets exit_code ("running" if it did not). Not for use inside $(...):
# a subshell cannot wait for its parent's children.
exit_code=""
wait_for_exit() {
  local pid="$1" deadline=$((SECONDS + $2))
  exit_code="running"
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid"
      exit_code=$?
      return 0
    fi
    sleep 0.05
  done
  return 1
}
