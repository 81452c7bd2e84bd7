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
check "list has a header" grep -Eq '^TOKEN +AGENT +POOLS +CREATED' list.out
check "list shows the first token as active" \
  grep -Eq "^$token +web-1 +- +[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z +never +active$" list.out
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

# --- expiry: issue --ttl/--expires, list, extend ---------------------------------
run code ttl.out ttl.err token issue --id web-2 --ttl 2h --credentials creds.txtpb
check "issue --ttl exits 0" test "$code" -eq 0
check "issue --ttl prints an expires line" \
  grep -Eqx 'expires: [0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z' ttl.out
ttl_token=$(awk '/^token:/{print $2}' ttl.out)
ttl_expires=$(awk '/^expires:/{print $2}' ttl.out)
in_2h=$(( $(date -u +%s) + 7200 ))
check "the expiry is two hours from now" \
  test $(( $(date -u -d "$ttl_expires" +%s) - in_2h )) -le 2 -a \
       $(( in_2h - $(date -u -d "$ttl_expires" +%s) )) -le 2
run code exp.out exp.err token issue --id web-3 --expires 2099-01-31T00:00:00Z --credentials creds.txtpb
check "issue --expires exits 0" test "$code" -eq 0
check "issue --expires keeps the time" grep -qx 'expires: 2099-01-31T00:00:00Z' exp.out
run code list3.out list3.err token list --credentials creds.txtpb
check "list has an EXPIRES column" grep -Eq '^TOKEN +AGENT +POOLS +CREATED \(UTC\) +EXPIRES \(UTC\) +STATUS' list3.out
check "list shows the expiry" grep -Eq "^$ttl_token +web-2 .* $ttl_expires +active$" list3.out
check "list shows never for a token without one" grep -Eq "^$token2 .* never +active$" list3.out
secret_before=$(grep -A3 "token_id: \"$ttl_token\"" creds.txtpb | awk '/secret:/{print $2}')
run code ext.out ext.err token extend "$ttl_token" --expires 2098-06-01T12:00:00Z --credentials creds.txtpb
check "extend exits 0" test "$code" -eq 0
check "extend says the new expiry" grep -q "now expires at 2098-06-01T12:00:00Z" ext.out
check "extend says a gateway needs a reload" grep -q 'reloads the file' ext.err
secret_after=$(grep -A3 "token_id: \"$ttl_token\"" creds.txtpb | awk '/secret:/{print $2}')
check "extend keeps the secret" test -n "$secret_before" -a "$secret_before" = "$secret_after"
run code list4.out list4.err token list --credentials creds.txtpb
check "list shows the extended expiry" grep -Eq "^$ttl_token .* 2098-06-01T12:00:00Z +active$" list4.out
# An expiry in the past (hand-edited) lists as expired.
sed -i "s/^\(  *expires_unix: \)$(date -u -d 2098-06-01T12:00:00Z +%s)\$/\11/" creds.txtpb
run code list5.out list5.err token list --credentials creds.txtpb
check "a past expiry lists as expired" grep -Eq "^$ttl_token .* expired$" list5.out
run code ext2.out ext2.err token extend "$ttl_token" --ttl 24h --credentials creds.txtpb
check "an expired token can be extended" test "$code" -eq 0
run code ext3.out ext3.err token extend "$token" --ttl 24h --credentials creds.txtpb
check "a revoked token cannot be extended (exit 1)" test "$code" -eq 1
check "and is told to issue a new one" grep -q 'is revoked; issue a new one' ext3.err
run code ext4.out ext4.err token extend "$ttl_token" --credentials creds.txtpb
check "extend without --ttl or --expires exits 2" test "$code" -eq 2
run code both.out both.err token issue --id web-4 --ttl 1h --expires 2099-01-01T00:00:00Z --credentials creds.txtpb
check "--ttl and --expires together exit 2" test "$code" -eq 2
check "and say so" grep -q 'not both' both.err
run code past.out past.err token issue --id web-4 --expires 2001-01-01T00:00:00Z --credentials creds.txtpb
check "an --expires in the past exits 2" test "$code" -eq 2
run code badt.out badt.err token issue --id web-4 --expires tomorrow --credentials creds.txtpb
check "a bad --expires exits 2 naming RFC 3339" grep -q 'RFC 3339' badt.err
check "and issued nothing" bash -c "! grep -q web-4 creds.txtpb"

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
