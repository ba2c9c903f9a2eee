#!/usr/bin/env bash
# sidecar against etcd on the same work, in one run (make bench).
#
#   bench/run.sh                 (make bench; BENCH_TRIALS=5 by default)
#
# Installs Debian's etcd-server and etcd-client with apt-get when etcd is
# missing, builds the comparison driver (bench/compare, a module of its own
# so that the main module never requires gRPC), and runs it: a 3-server
# etcd cluster and a 3-server sidecar cluster (plus sidecar clients) on
# 127.0.0.1 with default timings, the same client behaviour for both, one
# Markdown table of medians with the ratio sidecar/etcd on stdout. The DNS
# row runs bench/dns/run.sh once the clusters are stopped.
#
# With the tls section, a second sidecar cluster of the same shape runs with
# mutual TLS on the Raft/RPC port (certificates made by `sidecar tls` in the
# scratch directory) and a second table shows it beside plain sidecar; with
# the acl section, one under --acl-default-policy deny whose requests carry
# a token with rules, in a third table. Either alone starts no etcd.
#
# Environment: BENCH_TRIALS (5), BENCH_SECONDS (3, per throughput trial),
# BENCH_LOCK_OPS (200), BENCH_PROP_SAMPLES (50), BENCH_SCALE_INSTANCES
# (50000), BENCH_SECTIONS (all; a comma list of rss,kill,node,graceful,lock,
# propagation,leader,throughput,tls,acl,scale,dns, plus diag and profile, which
# only log: see bench/README.md), BENCH_OUT (also write the tables there),
# BENCH_KEEP=1 (keep the scratch directory and its logs), SIDECAR_BIN
# (bin/sidecar).
#
# Every process is started by the driver, which stops each by PID when it
# ends or is signalled (and gives each Pdeathsig=SIGKILL); this script stops
# the driver by PID on exit and removes the scratch directory (logs, data
# dirs). Only 127.0.0.1 is used.
set -euo pipefail

cd "$(dirname "$0")/.."

SIDECAR_BIN=${SIDECAR_BIN:-bin/sidecar}
export BENCH_TRIALS=${BENCH_TRIALS:-5}

log() { printf '== %s\n' "$*" >&2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sidecar-bench.XXXXXX")
driver=""

cleanup() {
	local status=$? i pid left
	if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
		kill -TERM "$driver" 2>/dev/null || true
		for i in $(seq 1 150); do # up to 15 s: it stops its children first
			kill -0 "$driver" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$driver" 2>/dev/null || true
	fi
	wait 2>/dev/null || true
	# Nothing started here may outlive the run: every etcd member, sidecar
	# server and the driver name the scratch directory on their command line.
	left=$(pgrep -f -- "$tmp" || true)
	if [ -n "$left" ]; then
		log "stopping leftover processes: $left"
		for pid in $left; do kill -KILL "$pid" 2>/dev/null || true; done
		status=1
	fi
	if [ "${BENCH_KEEP:-0}" = 1 ]; then
		log "kept $tmp (logs/, data dirs)"
	else
		rm -rf "$tmp"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- etcd ----------------------------------------------------------------
if ! command -v etcd >/dev/null 2>&1; then
	log "etcd missing: installing Debian's etcd-server and etcd-client"
	sudo=""
	if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; fi
	if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server etcd-client; } >"$tmp/apt.log" 2>&1; then
		log "could not install etcd-server:"; tail -n 20 "$tmp/apt.log" >&2
		exit 1
	fi
fi
etcd_bin=$(command -v etcd)

[ -x "$SIDECAR_BIN" ] || { log "no sidecar binary at $SIDECAR_BIN (make build)"; exit 1; }

# --- driver ----------------------------------------------------------------
log "building bench/compare"
(cd bench/compare && go build -o "$tmp/compare" .)

log "sidecar $("$SIDECAR_BIN" version 2>/dev/null | awk '{print $2}'), $("$etcd_bin" --version | head -n 1); $BENCH_TRIALS trials; scratch $tmp"
"$tmp/compare" run -sidecar "$SIDECAR_BIN" -etcd "$etcd_bin" -dir "$tmp" -dns-script bench/dns/run.sh &
driver=$!
status=0
wait "$driver" || status=$?
driver=""
exit "$status"
