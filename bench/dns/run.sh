#!/usr/bin/env bash
# DNS benchmark: SRV and A queries for one service of 50 passing instances,
# 10 s each, against a DNS server on 127.0.0.1.
#
#   bench/dns/run.sh            (make bench-dns)
#
# Target: the agent ($SIDECAR_BIN, or bin/sidecar) started with --dev, its 50
# instances registered over HTTP; without one, bench/dns/benchserver (the
# dnsserver package over an in-memory registry). BENCH_TARGET=agent or
# standalone forces the choice.
#
# Per query type, two dnsperf runs (installed with apt-get when missing):
#   1. throughput: as fast as 100 outstanding queries go: queries/s, lost,
#      average latency;
#   2. latency at the goal rate (RATE, 60000/s): dnsperf 2.10 prints no
#      percentiles, so it runs with -v and p50/p99/p99.9 are computed from
#      its per-query lines.
# When dnsperf cannot be installed, bench/dns/loadgen (a bounded Go load
# generator) does run 2 instead; LOADGEN=1 runs it in addition.
#
# Environment: DURATION (10), RATE (60000), QTYPES ("SRV A"),
# DNSPERF_ARGS (extra dnsperf flags, e.g. "-e" for EDNS0), LOADGEN,
# DNS_PORT/HTTP_PORT for the agent (17053/17080). Everything started is
# stopped by PID on exit. Only 127.0.0.1 is used.
set -euo pipefail

cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10}
RATE=${RATE:-60000}
QTYPES=${QTYPES:-SRV A}
DNSPERF_ARGS=${DNSPERF_ARGS:-}
LOADGEN=${LOADGEN:-0}
DNS_PORT=${DNS_PORT:-17053}
HTTP_PORT=${HTTP_PORT:-17080}
NAME=bench.service.sidecar.
INSTANCES=50

tmp=$(mktemp -d)
pids=()

cleanup() {
	local pid i
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || continue
		for i in $(seq 1 50); do # up to 5 s, then kill
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------
have_dnsperf=0
if command -v dnsperf >/dev/null 2>&1; then
	have_dnsperf=1
else
	log "dnsperf missing: installing the Debian package"
	sudo=""
	if [ "$(id -u)" != 0 ]; then
		if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; fi
	fi
	if command -v apt-get >/dev/null 2>&1 &&
		$sudo apt-get update -qq >"$tmp/apt.log" 2>&1 &&
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dnsperf >>"$tmp/apt.log" 2>&1; then
		have_dnsperf=1
	else
		log "could not install dnsperf (see below); measuring with bench/dns/loadgen only"
		tail -n 5 "$tmp/apt.log" >&2 || true
	fi
fi

log "building bench/dns tools"
go build -o "$tmp/loadgen" ./bench/dns/loadgen
go build -o "$tmp/benchserver" ./bench/dns/benchserver

# --- target ------------------------------------------------------------
target=${BENCH_TARGET:-}
bin=${SIDECAR_BIN:-bin/sidecar}
if [ -z "$target" ]; then
	if [ -n "${SIDECAR_BIN:-}" ] || [ -x bin/sidecar ]; then target=agent; else target=standalone; fi
fi

case "$target" in
agent)
	[ -x "$bin" ] || { log "no agent binary at $bin"; exit 1; }
	log "starting $bin agent --dev (DNS 127.0.0.1:$DNS_PORT, HTTP 127.0.0.1:$HTTP_PORT)"
	"$bin" agent --dev --name bench \
		--dns-addr "127.0.0.1:$DNS_PORT" --http-addr "127.0.0.1:$HTTP_PORT" \
		--log-level warn >"$tmp/target.log" 2>&1 &
	pids+=($!)
	ready=0
	for _ in $(seq 1 100); do # up to 20 s
		if curl -fsS -m 1 "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1; then ready=1; break; fi
		kill -0 "${pids[0]}" 2>/dev/null || break
		sleep 0.2
	done
	if [ "$ready" != 1 ]; then
		log "agent not ready; its log:"; tail -n 20 "$tmp/target.log" >&2; exit 1
	fi
	for i in $(seq 0 $((INSTANCES - 1))); do
		curl -fsS -m 5 -X PUT "http://127.0.0.1:$HTTP_PORT/v1/services" \
			-H 'Content-Type: application/json' \
			-d "{\"id\":\"bench-$i\",\"name\":\"bench\",\"address\":\"10.2.0.$((i + 1))\",\"port\":$((8000 + i))}" >/dev/null
	done
	addr="127.0.0.1:$DNS_PORT"
	;;
standalone)
	log "starting bench/dns/benchserver ($INSTANCES instances)"
	"$tmp/benchserver" -addr 127.0.0.1:0 -addr-file "$tmp/addr" -instances "$INSTANCES" >"$tmp/target.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 1 100); do # up to 10 s
		[ -s "$tmp/addr" ] && break
		kill -0 "${pids[0]}" 2>/dev/null || break
		sleep 0.1
	done
	[ -s "$tmp/addr" ] || { log "benchserver did not start:"; cat "$tmp/target.log" >&2; exit 1; }
	addr=$(cat "$tmp/addr")
	;;
*)
	log "BENCH_TARGET must be agent or standalone"; exit 2
	;;
esac
port=${addr##*:}

# The target must answer the name before it is measured.
probe=$("$tmp/loadgen" -server "$addr" -name "$NAME" -type SRV -rate 100 -duration 1s)
if ! grep -q 'rcode NOERROR' <<<"$probe"; then
	log "target at $addr does not answer $NAME SRV:"; echo "$probe" >&2
	[ "$target" = agent ] && log "does this agent serve DNS yet? BENCH_TARGET=standalone measures the dnsserver package alone"
	exit 1
fi

log "target $target at $addr; $(nproc) CPUs; $(go version | cut -d' ' -f3)"

# --- dnsperf ----------------------------------------------------------
# percentiles reads dnsperf -v lines ("> NOERROR name type latency"; lost
# queries are "> T name type") and prints p50 p99 p99.9 max of the answered.
percentiles() {
	awk '$1 == ">" && $2 != "T" {print $NF}' "$1" | sort -g | awk '
		{ v[NR] = $1 }
		END {
			if (NR == 0) { print "no answers"; exit }
			printf "p50 %.3fms  p99 %.3fms  p99.9 %.3fms  max %.3fms  (%d answers)",
				v[int(NR*0.5)+1]*1000, v[int(NR*0.99)+1]*1000, v[int(NR*0.999)+1]*1000, v[NR]*1000, NR
		}'
}

summary() { # file: qps, lost, average latency, response codes
	local qps lost avg codes
	qps=$(awk '/Queries per second:/ {printf "%.0f", $4}' "$1")
	lost=$(awk '/Queries lost:/ {print $3, $4}' "$1")
	avg=$(awk '/Average Latency/ {printf "%.3fms", $4*1000}' "$1")
	codes=$(awk '/Response codes:/ {$1=$2=""; print}' "$1")
	printf 'qps %s  lost %s  avg latency %s  codes%s' "$qps" "$lost" "$avg" "$codes"
}

if [ "$have_dnsperf" = 1 ]; then
	for t in $QTYPES; do
		echo "$NAME $t" >"$tmp/q-$t"
		cmd=(dnsperf -s 127.0.0.1 -p "$port" -d "$tmp/q-$t" -l "$DURATION" -T 1 -c 1 -q 100 -b 4096 $DNSPERF_ARGS)
		log "${cmd[*]}"
		"${cmd[@]}" >"$tmp/max-$t" 2>&1 || { cat "$tmp/max-$t" >&2; exit 1; }
		printf 'dnsperf %-4s max rate:      %s\n' "$t" "$(summary "$tmp/max-$t")"

		cmd=(dnsperf -s 127.0.0.1 -p "$port" -d "$tmp/q-$t" -l "$DURATION" -T 1 -c 1 -q 1000 -b 4096 -Q "$RATE" -v $DNSPERF_ARGS)
		log "${cmd[*]}"
		"${cmd[@]}" >"$tmp/rate-$t" 2>&1 || { tail -n 20 "$tmp/rate-$t" >&2; exit 1; }
		printf 'dnsperf %-4s at %s/s: %s\n' "$t" "$RATE" "$(summary "$tmp/rate-$t")"
		printf 'dnsperf %-4s at %s/s: latency %s\n' "$t" "$RATE" "$(percentiles "$tmp/rate-$t")"
		rm -f "$tmp/rate-$t"
	done
else
	LOADGEN=1
fi

# --- loadgen: latency at the goal rate, without dnsperf ----------------
if [ "$LOADGEN" = 1 ]; then
	for t in $QTYPES; do
		log "loadgen -server $addr -name $NAME -type $t -rate $RATE -duration ${DURATION}s"
		"$tmp/loadgen" -server "$addr" -name "$NAME" -type "$t" -rate "$RATE" -duration "${DURATION}s"
	done
fi
