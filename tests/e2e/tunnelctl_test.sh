#!/usr/bin/env bash
# End-to-end test of the tunnelctl binary: issue, list, revoke, exit codes and
# the credentials file's mode.
# Usage: tunnelctl_test.sh /path/to/tunnelctl [EMULATOR ARGS...]
# (a cross build passes its emulator, e.g. qemu-aarch64-static -L /)
set -euo pipefail

if [[ $# -lt 1 || ! -x "$1" ]]; then
  echo "usage: $0 /path/to/tunnelctl [EMULATOR ARGS...]" >&2
  exit 2
fi
TUNNELCTL=("${@:2}" "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")")

# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tunnelctl_test.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
# The environment must not leak into the flags under test.
unset TUNNEL_CREDENTIALS TUNNEL_ID || true

# run CODE_VAR OUT_FILE ERR_FILE args...: runs tunnelctl without tripping
# `set -e`, leaving the exit code in the named variable.
# shellcheck disable=SC2034  # code_ref is a nameref to the caller's variable
run() {
  local -n code_ref="$1"
  local out="$2" err="$3"
  shift 3
  code_ref=0
  "${TUNNELCTL[@]}" "$@" >"$out" 2>"$err" || code_ref=$?
}

file_mode() {
  stat -c '%a' "$1"
}

# --- issue -------------------------------------------------------------------
run code issue.out issue.err token issue --id web-1 --credentials creds.txtpb
check "issue exits 0" test "$code" -eq 0
check "issue prints exactly three lines" test "$(wc -l <issue.out)" -eq 3
check "issue prints agent_id line" grep -qx 'agent_id: web-1' issue.out
check "issue prints token line" grep -Eqx 'token: tok_[0-9a-f]{16}' issue.out
check "issue prints secret line" grep -Eqx 'secret: [A-Za-z0-9_-]{43}' issue.out
token="$(sed -n 's/^token: //p' issue.out)"
secret="$(sed -n 's/^secret: //p' issue.out)"
check "issue hints that the secret is shown once" grep -q 'only once' issue.err
check "issue shows an agent-tunnel example, the secret in the environment" \
  grep -q -- "TUNNEL_SECRET='$secret' agent-tunnel connect --gateway HOST:8080 --id web-1 --token $token --to http://127.0.0.1:3000" issue.err
check "the example does not put the secret on the command line" \
  bash -c "! grep -q -- '--secret' issue.err"
check "credentials file created" test -f creds.txtpb
check "credentials file mode is 600" test "$(file_mode creds.txtpb)" = 600

run code nodir.out nodir.err token issue --id web-1 --credentials nodir/creds.txtpb
check "issue into a missing directory exits 1" test "$code" -eq 1
check "and says what to run" grep -q 'directory nodir does not exist; create it first (mkdir -p nodir' nodir.err
check "and issued nothing" test ! -s nodir.out
run code www.out www.err token issue --id www --credentials slugs.txtpb
check "an id that cannot be a slug is issued" test "$code" -eq 0
check "with a note that the agent needs --slug" \
  grep -q 'agent id "www" cannot be its tunnel.s slug (slug "www" is reserved.*needs --slug NAME' www.err
check "and --slug in the example" grep -q -- '--id www --token tok_[0-9a-f]* --slug NAME' www.err

run code issue2.out issue2.err token issue --id=db-2 --credentials=creds.txtpb
check "second issue exits 0" test "$code" -eq 0
token2="$(sed -n 's/^token: //p' issue2.out)"
check "second issue gets a new token" test -n "$token2" -a "$token2" != "$token"

# The default path, and the environment fallback for --credentials.
run code def.out def.err token issue --id web-3
check "issue with default --credentials exits 0" test "$code" -eq 0
check "default file is tunnel-credentials.txtpb" test -f tunnel-credentials.txtpb
code=0
TUNNEL_CREDENTIALS=creds.txtpb "${TUNNELCTL[@]}" token list >env.out 2>env.err ||
  code=$?
check "list via TUNNEL_CREDENTIALS exits 0" test "$code" -eq 0
check "TUNNEL_CREDENTIALS is honoured" grep -q "$token2" env.out

# --- list --------------------------------------------------------------------
run code list.out list.err token list --credentials creds.txtpb
check "list exits 0" test "$code" -eq 0
check "list has a header" grep -Eq '^TOKEN +AGENT +CREATED' list.out
check "list shows the first token as active" \
  grep -Eq "^$token +web-1 +[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z +active$" list.out
check "list shows the second token" grep -q "$token2" list.out
check "list never prints a secret" bash -c "! grep -q -- '$secret' list.out list.err"

# --- revoke ------------------------------------------------------------------
run code rev.out rev.err token revoke "$token" --credentials creds.txtpb
check "revoke exits 0" test "$code" -eq 0
run code list2.out list2.err token list --credentials creds.txtpb
check "revoked token listed as revoked" grep -Eq "^$token .* revoked$" list2.out
check "other token still active" grep -Eq "^$token2 .* active$" list2.out
check "file mode still 600 after revoke" test "$(file_mode creds.txtpb)" = 600

run code unk.out unk.err token revoke tok_0000000000000000 --credentials creds.txtpb
check "revoking an unknown token exits 1" test "$code" -eq 1
check "unknown token error names the token" grep -q tok_0000000000000000 unk.err

# --- usage and runtime errors ------------------------------------------------
run code bad.out bad.err token list --no-such-flag
check "unknown flag exits 2" test "$code" -eq 2
check "unknown flag error names the flag" grep -q -- '--no-such-flag' bad.err
check "unknown flag prints a usage hint" grep -q -- '--help' bad.err

run code nocmd.out nocmd.err token frobnicate
check "unknown subcommand exits 2" test "$code" -eq 2
run code noid.out noid.err token issue --credentials creds.txtpb
check "issue without --id exits 2" test "$code" -eq 2
run code badid.out badid.err token issue --id 'no spaces' --credentials creds.txtpb
check "issue with an invalid --id exits 2" test "$code" -eq 2
run code norev.out norev.err token revoke --credentials creds.txtpb
check "revoke without TOKEN_ID exits 2" test "$code" -eq 2
run code none.out none.err
check "no arguments exits 2" test "$code" -eq 2
run code rlextra.out rlextra.err reload extra
check "reload with an argument exits 2" test "$code" -eq 2
run code rltime.out rltime.err reload --timeout 0s
check "reload with a zero --timeout exits 2" test "$code" -eq 2
run code rldown.out rldown.err reload --admin 127.0.0.1:1 --timeout 2s
check "reload of an unreachable gateway exits 1" test "$code" -eq 1
check "and says it cannot reach it" grep -q "cannot reach the gateway's admin API" rldown.err

for args in "--help" "token --help" "token issue --help" "token list -h" \
  "token revoke --help" "reload --help"; do
  # shellcheck disable=SC2086  # word splitting intended
  run code help.out help.err $args
  check "'$args' exits 0" test "$code" -eq 0
  check "'$args' prints usage" grep -qi usage help.out
done

run code missing.out missing.err token list --credentials absent.txtpb
check "list of a missing file exits 1" test "$code" -eq 1
printf 'credentials {\n  token_id: "x"\n  nonsense: 1\n}\n' >broken.txtpb
run code broken.out broken.err token list --credentials broken.txtpb
check "list of an invalid file exits 1" test "$code" -eq 1
check "syntax error names file and line" grep -q 'broken.txtpb:3:' broken.err
run code brokenissue.out brokenissue.err token issue --id x --credentials broken.txtpb
check "issue into an invalid file exits 1" test "$code" -eq 1
check "invalid file left untouched" grep -q nonsense broken.txtpb

echo "tunnelctl_test: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
