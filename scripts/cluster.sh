#!/usr/bin/env bash
# Starts a local cluster of 3 servers and 2 clients on 127.0.0.1, prints how
# to query it, and stops every process it started when interrupted (or after
# CLUSTER_SECONDS, when set). Data lives in a temporary directory, removed on
# exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SIDECAR_BIN:-bin/sidecar}
[ -x "$BIN" ] || { echo "cluster: $BIN not built (run make build)" >&2; exit 1; }
DIR=$(mktemp -d /tmp/sidecar-cluster.XXXXXX)
PIDS=()
cleanup() {
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$DIR"
	echo "cluster: stopped ${#PIDS[@]} agents, removed $DIR"
}
trap cleanup EXIT INT TERM

# Ports: node i uses gossip 17946+10i, raft 17947+10i, http 17080+10i, dns 17053+10i.
start() { # name index extra-args...
	local name=$1 i=$2; shift 2
	"$BIN" agent --name "$name" --bind-addr 127.0.0.1:$((17946 + 10 * i)) --advertise-addr 127.0.0.1 \
		--http-addr 127.0.0.1:$((17080 + 10 * i)) --dns-addr 127.0.0.1:$((17053 + 10 * i)) \
		"$@" >"$DIR/$name.log" 2>&1 &
	PIDS+=($!)
}
for i in 0 1 2; do
	start "server-$i" $i --server --bootstrap-expect 3 --raft-addr 127.0.0.1:$((17947 + 10 * i)) \
		--data-dir "$DIR/server-$i" --join 127.0.0.1:17946
done
start client-a 3 --data-dir "$DIR/client-a" --join 127.0.0.1:17946
start client-b 4 --data-dir "$DIR/client-b" --join 127.0.0.1:17946

for i in 0 1 2 3 4; do
	port=$((17080 + 10 * i))
	for _ in $(seq 1 300); do
		curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
		sleep 0.1
	done
	curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "cluster: agent on $port not ready; logs in $DIR" >&2; tail -20 "$DIR"/*.log >&2; exit 1; }
done

cat <<TXT
cluster: 3 servers and 2 clients are up (logs in $DIR).
  members:     $BIN members --http-addr 127.0.0.1:17110
  register:    $BIN register --name web --port 8080 --address 127.0.0.1 --http-addr 127.0.0.1:17110   # on client-a
  resolve:     dig @127.0.0.1 -p 17093 web.service.sidecar SRV                                      # on client-b
  raft status: $BIN status --http-addr 127.0.0.1:17080
  elect:       $BIN elect primary --value 127.0.0.1:5432 --http-addr 127.0.0.1:17120 -- sleep 600
Press Ctrl-C to stop them all.
TXT
"$BIN" members --http-addr 127.0.0.1:17110
if [ -n "${CLUSTER_SECONDS:-}" ]; then
	sleep "$CLUSTER_SECONDS"
else
	wait -n "${PIDS[@]}" || true
	echo "cluster: an agent exited; stopping the rest" >&2
fi
