#!/bin/sh
# Checks alerts.yml and runs its unit tests (alerts_test.yml) with promtool.
# When promtool is missing, installs Debian's prometheus package (root, or
# sudo without a password) with no service left running: a policy-rc.d
# that forbids starts is put in place for the install if there is none, and
# any prometheus process that appeared during the install is stopped (by its
# pid) and its unit disabled where systemd runs.
set -eu
cd "$(dirname "$0")"

log() { echo "prometheus/check.sh: $*" >&2; }

install_promtool() {
	sudo=""
	if [ "$(id -u)" != 0 ]; then
		if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
			sudo="sudo -n"
		else
			log "promtool missing and not root: apt-get install prometheus, or put promtool on PATH"
			exit 1
		fi
	fi
	log "promtool missing: installing Debian's prometheus package"
	before=$(pgrep -x prometheus || true)
	policy=/usr/sbin/policy-rc.d
	added=""
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# sidecar deploy/prometheus/check.sh: no service starts during its install\nexit 101\n' |
			$sudo tee "$policy" >/dev/null
		$sudo chmod 755 "$policy"
		added=1
	fi
	apt_log=$(mktemp)
	status=0
	{ $sudo apt-get update -qq -o DPkg::Lock::Timeout=300 &&
		$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends prometheus; } >"$apt_log" 2>&1 || status=$?
	[ -n "$added" ] && $sudo rm -f "$policy"
	if [ "$status" != 0 ]; then
		log "apt-get install prometheus failed:"
		tail -n 20 "$apt_log" >&2
		rm -f "$apt_log"
		exit 1
	fi
	rm -f "$apt_log"
	# The package's unit is enabled by its postinst; only promtool is wanted.
	if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
		$sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
	fi
	for pid in $(pgrep -x prometheus || true); do
		case " $(echo $before) " in *" $pid "*) continue ;; esac
		log "stopping prometheus pid $pid started by the install"
		$sudo kill "$pid" 2>/dev/null || true
	done
	command -v promtool >/dev/null 2>&1 || { log "promtool still missing after the install"; exit 1; }
}

command -v promtool >/dev/null 2>&1 || install_promtool
promtool --version 2>&1 | head -n 1
promtool check rules alerts.yml
promtool test rules alerts_test.yml
