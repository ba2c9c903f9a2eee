# Monitoring (deploy/grafana, deploy/prometheus): promtool checks the alerting
# rules and runs their unit tests, then parses every query of the Grafana
# dashboard (TestMonitoring_dashboardQueriesParse, which skips under
# `make test-go` while promtool is missing). promtool comes from Debian's
# prometheus package, installed when missing (root or passwordless sudo)
# with no service left running. The other TestMonitoring_* tests of
# deploy/ (run by test-go) check the dashboard's structure and that every
# series the dashboard and the rules read is one a dev agent exports.
# A few seconds once promtool is there (about 15 s more to install it).

.PHONY: alerts-test

## alerts-test: promtool check rules and test rules on deploy/prometheus, and promtool's parse of the dashboard's queries (installs Debian's prometheus package if promtool is missing; no daemon is left running)
alerts-test:
	deploy/prometheus/check.sh
	SIDECAR_REQUIRE_PROMTOOL=1 $(GO) test -count=1 -run '^TestMonitoring_dashboardQueriesParse$$' ./deploy/

TEST_EXTRA += alerts-test
