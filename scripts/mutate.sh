#!/usr/bin/env bash
# make mutate: gremlins (mutation testing) on each package named, with that
# package's own tests, then one table of the results against the
# thresholds (scripts/mutate). The test helpers (electiontest, agenttest,
# discoverytest) are not mutated: they are not the code under test.
#
# Environment: GREMLINS (the binary; default $(go env GOPATH)/bin/gremlins),
# MUTATE_OUT (keep the JSON results and logs there; default a temporary
# directory), MUTATE_DIFF (a branch or commit: mutate only the lines changed
# since it, gremlins --diff), MUTATE_WORKERS (gremlins --workers; default
# one per CPU: election's tests wait more than they compute, so 3 on two
# CPUs finishes it sooner).
set -euo pipefail
cd "$(dirname "$0")/.."

GREMLINS=${GREMLINS:-$(go env GOPATH)/bin/gremlins}
out=${MUTATE_OUT:-$(mktemp -d)}
mkdir -p "$out"
args=()
out=$(cd "$out" && pwd)
root=$(pwd)
for pkg in "$@"; do
	start=$(date +%s)
	# gremlins v0.6.0 matches the paths git diff prints (from the
	# repository's root) against paths relative to the package, so with a
	# diff it runs from the package's directory (given as an absolute
	# path) and git prints paths relative to it (diff.relative).
	dir=$root
	if [ -n "${MUTATE_DIFF:-}" ]; then
		dir=$root/$pkg
		export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=diff.relative GIT_CONFIG_VALUE_0=true
	fi
	if ! (cd "$dir" && "$GREMLINS" unleash "$root/$pkg" --exclude-files '(electiontest|agenttest|discoverytest)/' \
		-o "$out/$pkg.json" ${MUTATE_DIFF:+--diff "$MUTATE_DIFF"} ${MUTATE_WORKERS:+--workers "$MUTATE_WORKERS"}) >"$out/$pkg.log" 2>&1; then
		echo "mutate: gremlins failed on $pkg (its output: $out/$pkg.log)" >&2
		exit 2
	fi
	echo "mutate: $pkg done in $(($(date +%s) - start)) s" >&2
	args+=("$pkg=$out/$pkg.json")
done
go run ./scripts/mutate -efficacy fsm=95,acl=95,tlsutil=95,election=85,dnsserver=85,localstate=85 -coverage 90 "${args[@]}"
