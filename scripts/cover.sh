#!/usr/bin/env bash
# make cover: statement coverage of the whole suite, the black-box and boot tests included.
#
# The unit tests count in-process (go test -cover, counters written with -test.gocoverdir).
# What only the built binary runs (cmd/haagent, most of bootstrap and replicated) is counted
# by building that binary with -cover (cmd/haagent's TestMain does, when HAAGENT_COVERDIR is
# set) and running it with GOCOVERDIR, on the host and inside the systemd-nspawn box (whose
# counters the boot test copies out). Both sets are merged with go tool covdata, per package.
#
#   scripts/cover.sh            run the suite, print the table, write cover.out and cover.html
#
# HAAGENT_COVER_TESTS (default ./...) and HAAGENT_COVER_RUN (a -run pattern) narrow what runs,
# for a look at one area; the figures then count only that.
#
# The peers must be built (make peers); a missing one fails here as in CI (CI=true), so the
# figures never silently leave out a tier.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C # sort and join must agree on the order

GO=${GO:-go}
out=${HAAGENT_COVER_WORK:-$PWD/.cover}
rm -rf "$out"
mkdir -p "$out/unit" "$out/bin"

# Every package of ours but the test harness (peertest is only imported by tests).
pkgs=$($GO list ./... | grep -v '/internal/peertest$' | paste -sd, -)
export HAAGENT_COVERPKG=$pkgs HAAGENT_COVERDIR=$out/bin
export CI=${CI:-true}
export HAAGENT_PEERS_BIN=${HAAGENT_PEERS_BIN:-$(scripts/peers.sh bin)}

# The whole log goes to a file; the packages' result lines are shown as they come.
set +e
read -ra tests <<< "${HAAGENT_COVER_TESTS:-./...}"
run=()
[ -n "${HAAGENT_COVER_RUN:-}" ] && run=(-run "$HAAGENT_COVER_RUN")
$GO test -count=1 -timeout 40m -covermode=atomic -coverpkg="$pkgs" "${run[@]}" "${tests[@]}" -args -test.gocoverdir="$out/unit" 2>&1 |
  tee "$out/test.log" | grep --line-buffered -E '^(ok|FAIL|panic)' | sed -u -E 's/ of statements in .*/ of the statements of all packages/'
status=${PIPESTATUS[0]}
set -e

# covdata percent prints "<tab>PKG<tab><tab>coverage: N% of statements" (nothing for a package
# without statements): one column per tier, then the merged one.
percent() { $GO tool covdata percent -i="$1" | awk '$2 == "coverage:" { sub("%", "", $3); print $1, $3 }' | sort; }
percent "$out/unit" > "$out/unit.txt"
percent "$out/bin" > "$out/bin.txt"
percent "$out/unit,$out/bin" > "$out/all.txt"
$GO tool covdata textfmt -i="$out/unit,$out/bin" -o cover.out
$GO tool cover -html=cover.out -o cover.html
total=$($GO tool cover -func=cover.out | awk '/^total:/ { print $3 }')

mod=$($GO list -m)
printf '\n%-36s %10s %10s %10s\n' "package (statements covered)" "unit" "binary" "all"
join -a1 -e - -o 0,2.2,1.2 "$out/all.txt" "$out/unit.txt" > "$out/j1.txt"
join -a1 -e - -o 0,1.2,2.2,1.3 "$out/j1.txt" "$out/bin.txt" |
  while read -r pkg unit bin all; do
    printf '%-36s %9s%% %9s%% %9s%%\n' "${pkg#"$mod"/}" "$unit" "$bin" "$all"
  done
printf '%-36s %10s %10s %10s\n' "total" "" "" "$total"
echo
echo "cover.out, cover.html written; raw counters in $out (unit: go test in-process; binary: haagent runs of the black-box and boot tests)"
if [ "$status" -ne 0 ]; then
  echo "cover: some tests failed (see $out/test.log): the figures count what ran" >&2
fi
exit "$status"
