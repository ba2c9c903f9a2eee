#!/usr/bin/env bash
# Plain text against TLS in the black-box layer: the durability series and a
# campaign, same seed and lengths, once with BLACKBOX_TLS=0 and once with
# BLACKBOX_TLS=1, one after the other (never side by side: they would share
# the machine), then the figures of both.
#
#   chaos/blackbox/compare.sh SEED [DURATION [LEADER_KILLS RANDOM_KILLS]]
#
# Prints, per transport, the summary lines of run.sh (new leader after a
# leader kill, convergence after a restart, handovers, anomalies) and
# BLACKBOX-COMPARE lines. Logs: $BLACKBOX_LOGDIR (default
# /tmp/sidecar-chaos-logs/blackbox-SEED)-{plain,tls}/.
set -uo pipefail
cd "$(dirname "$0")/../.."
seed=${1:?usage: $0 SEED [DURATION [LEADER_KILLS RANDOM_KILLS]]}
dur=${2:-60s}
lk=${3:-15}
rk=${4:-5}
base=${BLACKBOX_LOGDIR:-/tmp/sidecar-chaos-logs/blackbox-$seed}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
fail=0
for tls in 0 1; do
	name=plain
	[ $tls = 1 ] && name=tls
	start=$(date +%s)
	BLACKBOX_TLS=$tls BLACKBOX_LOGDIR=$base-$name ./chaos/blackbox/run.sh durability "$seed" "$lk" "$rk" | tee -a "$out" || fail=1
	BLACKBOX_TLS=$tls BLACKBOX_LOGDIR=$base-$name ./chaos/blackbox/run.sh campaign "$seed" "$dur" | tee -a "$out" || fail=1
	echo "BLACKBOX-WALL transport=$name seconds=$(($(date +%s) - start))" | tee -a "$out"
done
# One line per transport: durability's new leader and convergence, the
# campaign's handovers, anomalies and failures.
awk '
/^BLACKBOX-DURABILITY/ { tr = $3; sub(",", "", tr); d[tr] = $0; sub(/.*; new leader/, "new leader", d[tr]); sub(/; failures.*/, "", d[tr]) }
/^CHAOS-RESULT layer=blackbox/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] } c[f["transport"]] = sprintf("campaign ops %s faults %s handovers %s anomalies %s failures %s", f["ops"], f["faults"], f["handovers"], f["anomalies"], f["failures"]) }
/^BLACKBOX-WALL/ { split($2, kv, "="); w[kv[2]] = $3 }
END { for (tr in d) printf "BLACKBOX-COMPARE transport=%s %s; %s; wall %ss\n", tr, d[tr], c[tr], substr(w[tr], 9) }
' "$out" | sort
exit $fail
