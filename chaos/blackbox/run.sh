#!/usr/bin/env bash
# Black-box fault injection (chaos/blackbox): 5 servers and 2 clients of
# bin/sidecar as processes, each in its own network namespace, cut apart by
# iptables rules inside those namespaces.
#
#   chaos/blackbox/run.sh durability SEED [LEADER_KILLS [RANDOM_KILLS]]
#   chaos/blackbox/run.sh campaign SEED DURATION
#
# BLACKBOX_TLS=1 (the default) runs every agent with mutual TLS on its
# Raft/RPC port and an encrypted gossip: a CA, a server certificate for
# s1..s5 and a client certificate for c1, c2 are made for the run with
# `bin/sidecar tls`, and a gossip key with `bin/sidecar keygen`.
# BLACKBOX_TLS=0 runs them in plain text (the comparison runs).
# BLACKBOX_ACL=1 (the default) runs every agent with --acl-default-policy
# deny: the harness bootstraps the ACLs and each app writes with its own
# token; BLACKBOX_ACL=0 runs without tokens.
#
# Topology: a hub namespace holds bridge br0 with the harness at $NET.1;
# node i (s1..s5, c1, c2) lives in namespace $PREFIX-n$i with eth0 at
# $NET.(10+i), one end of a veth whose other end is on br0. The harness
# (this package's test binary, run inside the hub) reaches every node; the
# tests cut nodes apart with chains BB_IN/BB_OUT inside each node's
# namespace. Nothing is routed to or from the root namespace, and its
# iptables (Docker's) are never touched.
#
# Everything made here (agents, namespaces with their veths, temp dirs) is
# removed on exit; namespaces of earlier runs whose PID is gone are removed
# at start. Logs stay in $BLACKBOX_LOGDIR/MODE (default
# /tmp/sidecar-chaos-logs/blackbox-SEED/MODE), printed on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
GO=${GO:-go}
mode=${1:?usage: $0 durability|campaign SEED [DURATION|LEADER_KILLS RANDOM_KILLS]}
seed=${2:-$(date +%s)}
case $mode in
durability)
	test=TestDurability
	export BLACKBOX_LEADER_KILLS=${3:-15} BLACKBOX_RANDOM_KILLS=${4:-5}
	;;
campaign)
	test=TestCampaign
	export BLACKBOX_DURATION=${3:-60s}
	;;
*)
	echo "usage: $0 durability|campaign SEED [DURATION|LEADER_KILLS RANDOM_KILLS]" >&2
	exit 2
	;;
esac

if [ "$(id -u)" != 0 ]; then
	echo "blackbox: needs root (network namespaces, iptables)" >&2
	exit 1
fi
# Install what is missing, non-interactively.
missing=""
command -v ip >/dev/null || missing="$missing iproute2"
command -v iptables-restore >/dev/null || missing="$missing iptables"
if [ -n "$missing" ]; then
	echo "blackbox: installing$missing"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

prefix=scbb$$
net=${BLACKBOX_NET_PREFIX:-10.203.0}
nodes=7
hub=$prefix-hub
logdir=${BLACKBOX_LOGDIR:-/tmp/sidecar-chaos-logs/blackbox-$seed}/$mode
work=$(mktemp -d /tmp/sidecar-blackbox.XXXXXX)

# remove_ns NS kills whatever still runs in NS, then deletes it (its veth
# ends, and their peers, go with it).
remove_ns() {
	local pids
	pids=$(ip netns pids "$1" 2>/dev/null || true)
	if [ -n "$pids" ]; then
		kill -CONT $pids 2>/dev/null || true
		kill -KILL $pids 2>/dev/null || true
	fi
	ip netns del "$1" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	for ns in $(ip netns list | awk '{print $1}' | grep "^$prefix-" || true); do
		remove_ns "$ns"
	done
	rm -rf "$work"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stale namespaces of runs whose shell is gone.
for ns in $(ip netns list | awk '{print $1}' | grep '^scbb[0-9]*-' || true); do
	pid=${ns#scbb}
	pid=${pid%%-*}
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "blackbox: removing stale namespace $ns"
		remove_ns "$ns"
	fi
done

[ -x bin/sidecar ] || make build
$GO test -c -o "$work/blackbox.test" ./chaos/blackbox

# TLS files and the gossip key, made once per run by the binary under test.
tlsenv=()
case ${BLACKBOX_TLS:-1} in
1)
	tlsdir=$work/tls
	bin/sidecar tls ca create --dir "$tlsdir" >/dev/null
	for i in $(seq 1 $nodes); do
		if [ "$i" -le 5 ]; then role=--server name=s$i; else role=--client name=c$((i - 5)); fi
		bin/sidecar tls cert create $role --node "$name" --dir "$tlsdir" >/dev/null
	done
	tlsenv=(BLACKBOX_TLS_DIR="$tlsdir" BLACKBOX_ENCRYPT="$(bin/sidecar keygen)")
	;;
0) ;;
*)
	echo "blackbox: BLACKBOX_TLS must be 1 or 0" >&2
	exit 2
	;;
esac

ip netns add "$hub"
ip -n "$hub" link set lo up
ip -n "$hub" link add br0 type bridge
ip -n "$hub" addr add "$net.1/24" dev br0
ip -n "$hub" link set br0 up
for i in $(seq 1 $nodes); do
	ns=$prefix-n$i
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	ip -n "$hub" link add "vn$i" type veth peer name eth0 netns "$ns"
	ip -n "$hub" link set "vn$i" master br0 up
	ip -n "$ns" addr add "$net.$((10 + i))/24" dev eth0
	ip -n "$ns" link set eth0 up
done

rm -rf "$logdir"
mkdir -p "$logdir"
echo "blackbox: $mode seed $seed, TLS ${BLACKBOX_TLS:-1}, ACL ${BLACKBOX_ACL:-1}, namespaces $prefix-*, logs $logdir"
set +e
ip netns exec "$hub" env \
	BLACKBOX_PREFIX="$prefix" BLACKBOX_NET="$net" BLACKBOX_LOGDIR="$logdir" \
	BLACKBOX_DATADIR="$work/data" BLACKBOX_SEED="$seed" BLACKBOX_OUT="$logdir/viz" \
	SIDECAR_BIN="$PWD/bin/sidecar" "${tlsenv[@]}" \
	"$work/blackbox.test" -test.run "^$test\$" -test.v -test.count=1 -test.timeout "${BLACKBOX_TIMEOUT:-30m}" \
	>"$logdir/test.log" 2>&1
rc=$?
set -e
# The summary: from a BLACKBOX- line to its last line.
awk '/^BLACKBOX-/{p=1} p{print} /^CHAOS-RESULT|^BLACKBOX-DURABILITY/{p=0}' "$logdir/test.log"
if [ $rc != 0 ]; then
	grep -E -- '--- FAIL|FAIL:|panic:|blackbox_test.go:[0-9]+: ' "$logdir/test.log" | tail -40 || true
	echo "FAIL: blackbox $mode seed $seed (replay: BLACKBOX_TLS=${BLACKBOX_TLS:-1} BLACKBOX_ACL=${BLACKBOX_ACL:-1} $0 $mode $seed ${3:-} ${4:-}), logs $logdir (test.log, one per agent)"
	ls "$logdir"/viz/*.html 2>/dev/null | sed 's/^/visualization: /' || true
fi
exit $rc
