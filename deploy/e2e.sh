#!/usr/bin/env bash
# End-to-end test of deploy/compose, run by `make e2e` (and so by `make test`
# and CI) after `make image`. It runs the compose cluster under a project
# name of its own (sidecar-e2e-<pid>), drives it from deploy/e2e_test.go
# (go test -tags e2e), and removes the project's containers, network and
# volumes on every exit: success, failure, timeout or Ctrl-C. The images are
# kept. Where no Docker engine answers it says so and fails.
#
# Environment: SIDECAR_IMAGE, DEMO_IMAGE (default sidecar:latest,
# sidecar-demo:latest), DOCKER (docker), GO (go), E2E_TIMEOUT (seconds the
# test may take, default 240). The gossip key is made here (SIDECAR_ENCRYPT).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
GO=${GO:-go}
E2E_TIMEOUT=${E2E_TIMEOUT:-240}
export SIDECAR_IMAGE=${SIDECAR_IMAGE:-sidecar:latest}
export DEMO_IMAGE=${DEMO_IMAGE:-sidecar-demo:latest}
file=deploy/compose/docker-compose.yml
start=$(date +%s)

fail() {
	echo "e2e: FAIL: $*" >&2
	exit 1
}

command -v "$DOCKER" >/dev/null 2>&1 || fail "no '$DOCKER' command: the end-to-end test needs a Docker engine and its CLI"
if ! out=$(timeout 20 "$DOCKER" version --format '{{.Server.Version}}' 2>&1); then
	fail "no Docker engine answers ($DOCKER version: $(echo "$out" | tail -n 1)); the end-to-end test needs one and is not skipped"
fi
echo "e2e: Docker engine $out"

# Compose v2 (the docker plugin) or v1 (docker-compose); both read the file.
if "$DOCKER" compose version >/dev/null 2>&1; then
	compose=("$DOCKER" compose)
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
	compose=(docker-compose)
else
	fail "neither '$DOCKER compose' nor 'docker-compose' works"
fi
echo "e2e: compose: ${compose[*]} ($("${compose[@]}" version --short 2>/dev/null || echo '?'))"

for img in "$SIDECAR_IMAGE" "$DEMO_IMAGE"; do
	"$DOCKER" image inspect "$img" >/dev/null 2>&1 || fail "image $img is missing: run 'make image' (or 'make e2e', which builds it)"
done

# The compose file needs a gossip key (SIDECAR_ENCRYPT; a user keeps one in
# deploy/compose/.env): each run makes its own with the image's keygen. The
# compose commands below (the leftover cleanup too) interpolate it.
SIDECAR_ENCRYPT=$("$DOCKER" run --rm "$SIDECAR_IMAGE" keygen) || fail "'$DOCKER run --rm $SIDECAR_IMAGE keygen' failed"
export SIDECAR_ENCRYPT

# Projects of earlier runs that died without cleaning up (kill -9, power
# loss): their pid is gone and their containers are older than any run may
# last (10 minutes), which spares live runs in other pid namespaces sharing
# this engine. Remove them so they do not pile up.
now=$(date +%s)
for p in $("$DOCKER" ps -a --filter label=com.docker.compose.project --format '{{.Label "com.docker.compose.project"}}' | sort -u); do
	case $p in
	sidecar-e2e-*)
		pid=${p#sidecar-e2e-}
		kill -0 "$pid" 2>/dev/null && continue
		created=$("$DOCKER" inspect -f '{{.Created}}' $("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$p") 2>/dev/null | sort | tail -n 1)
		age=$((now - $(date -d "$created" +%s 2>/dev/null || echo "$now")))
		if [ "$age" -gt 600 ]; then
			echo "e2e: removing leftover project $p (${age}s old)"
			timeout 60 "${compose[@]}" -p "$p" -f "$file" down -v --remove-orphans -t 1 >/dev/null 2>&1 || true
		fi ;;
	esac
done

project=sidecar-e2e-$$
cleanup() {
	code=$?
	trap - EXIT INT TERM
	echo "e2e: removing project $project (containers, network, volumes; images kept)"
	timeout 90 "${compose[@]}" -p "$project" -f "$file" down -v --remove-orphans -t 5 >/dev/null 2>&1 ||
		echo "e2e: WARNING: '${compose[*]} -p $project down -v' failed; remove it by hand" >&2
	left=$("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$project")
	if [ -n "$left" ]; then
		echo "e2e: WARNING: containers of $project left: $left" >&2
	fi
	if [ "$code" -eq 0 ]; then
		echo "e2e: PASS in $(($(date +%s) - start))s"
	else
		echo "e2e: FAIL (exit $code) after $(($(date +%s) - start))s" >&2
	fi
	exit "$code"
}
child=
trap cleanup EXIT
# The test runs in the background so that a signal to this script (Ctrl-C
# under make, or a CI runner's SIGTERM) is handled at once: stop the test,
# then remove the project.
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; exit 130' INT
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; exit 143' TERM

export E2E_COMPOSE="${compose[*]}" E2E_PROJECT=$project E2E_COMPOSE_FILE=$PWD/$file DOCKER
# go test's own -timeout panics without running cleanups; timeout(1) is the
# backstop, and the trap above removes the project in every case.
timeout --kill-after=10 $((E2E_TIMEOUT + 30)) \
	"$GO" test -tags e2e -count=1 -v -timeout "${E2E_TIMEOUT}s" -run '^(TestImage|TestE2E)' ./deploy/ &
child=$!
wait "$child"
