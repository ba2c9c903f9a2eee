// Package blackbox is the black-box layer of sidecar's fault-injection
// suite: 5 servers and 2 clients run as real `sidecar agent` processes, each
// in its own network namespace with its own address on a bridge, and the
// harness (this package's test binary, run by run.sh inside the hub
// namespace that holds the bridge) cuts them apart with iptables rules
// inside each node's namespace, pauses them with SIGSTOP/SIGCONT and kills
// them with SIGKILL before restarting them on their data dirs.
//
// The tests skip unless run.sh set up the namespaces (BLACKBOX_PREFIX), so
// `go test ./...` stays fast. See README.md.
package blackbox
