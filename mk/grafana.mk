# Monitoring (deploy/grafana, deploy/prometheus): promtool checks the alerting
# rules and runs their unit tests. promtool comes from Debian's prometheus
# package, installed when missing (root or passwordless sudo) with no
# service left running. The Go test of deploy/ (TestMonitoring_*) checks
# that every metric the dashboard and the rules read is one an agent
# exports. A few seconds once promtool is there.

.PHONY: alerts-test

## alerts-test: promtool check rules and promtool test rules on deploy/prometheus (installs Debian's prometheus package if promtool is missing; no daemon is left running)
alerts-test:
	deploy/prometheus/check.sh

TEST_EXTRA += alerts-test
