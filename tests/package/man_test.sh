#!/bin/sh
# The man pages: no groff or man warnings, every command-line option of
# every subcommand documented in isoproxy(8), every key of conf/schema.md
# named in isoproxy.toml(5). Usage: man_test.sh SOURCE_DIR ISOPROXY_BINARY
set -u
src=$1
bin=$2
failed=0
fail() { echo "FAIL: $*"; failed=1; }

man8=$src/packaging/man/isoproxy.8
man5=$src/packaging/man/isoproxy.toml.5
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

for page in "$man8" "$man5"; do
	groff -man -ww -z "$page" >"$tmp/groff" 2>&1 || fail "groff could not format $page"
	[ -s "$tmp/groff" ] && fail "groff warnings for $page: $(cat "$tmp/groff")"
	if command -v man >/dev/null 2>&1; then
		LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$page" >"$tmp/text" 2>"$tmp/man" || fail "man could not format $page"
		[ -s "$tmp/man" ] && fail "man warnings for $page: $(cat "$tmp/man")"
		[ -s "$tmp/text" ] || fail "man rendered nothing for $page"
	fi
done

# The roff source as plain text: font changes and escapes removed.
plain() { sed -e 's/\\f[BIRP]//g' -e 's/\\-/-/g' -e 's/\\(dq/"/g' -e 's/\\~/ /g' "$1"; }
plain "$man8" >"$tmp/man8"
plain "$man5" >"$tmp/man5"

# Every subcommand of `isoproxy --help`, and every long option of each.
subcommands=$("$bin" --help | sed -n '/^Subcommands:/,$p' | sed -n 's/^  \([a-z][a-z-]*\) .*/\1/p')
[ -n "$subcommands" ] || fail "no subcommands in isoproxy --help"
for sub in $subcommands; do
	grep -q "isoproxy $sub" "$tmp/man8" || fail "isoproxy.8 does not document the command '$sub'"
	for opt in $("$bin" "$sub" --help | grep -oE -- '--[a-z][a-z-]*' | sort -u); do
		grep -qF -- "$opt" "$tmp/man8" || fail "isoproxy.8 does not document '$sub $opt'"
	done
done

# Every key in the key tables of conf/schema.md ("| key | type | ..." headers).
keys=$(awk '/^\| key \|/ { t = 1; next } /^\|---/ { next } /^\|/ { if (t) { split($0, a, "|"); print a[2] } next } { t = 0 }' \
	"$src/conf/schema.md" | tr ',' '\n' | sed -n 's/^ *`\([^`]*\)` *$/\1/p' | sort -u)
[ -n "$keys" ] || fail "no keys found in conf/schema.md"
for key in $keys; do
	grep -qF -- "$key" "$tmp/man5" || fail "isoproxy.toml.5 does not name the key '$key' (conf/schema.md lists it)"
done

[ $failed -eq 0 ] && echo "man pages: ok ($(echo "$keys" | wc -l) keys, subcommands: $(echo $subcommands))"
exit $failed
