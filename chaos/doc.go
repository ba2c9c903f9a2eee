// Package chaos is sidecar's fault-injection suite, in the style of etcd's
// robustness tests and Jepsen: it drives real servers under partitions,
// one-way cuts, delays, loss and crashes while sequential clients register,
// deregister, read, lock and campaign, records every operation with its
// invoke and return times and outcome (ok, failed, unknown), and checks the
// history against the guarantees of SPEC.md.
//
//   - chaos/checker: the history, porcupine models (registry per key, try-
//     locks per name) and the other checks (fencing tokens, a fenced
//     resource, never two live holders, leases never expire early, no lost
//     acknowledged write, convergence, no hold on a dead lease).
//   - chaos/inproc: 3 or 5 election.Server on real Raft and raft-boltdb in
//     temporary dirs, linked by a transport that drops, delays and cuts
//     links one way, on top of Raft over mutual TLS 1.3 on loopback (or,
//     to compare, plain TCP or raft's in-memory transport); servers crash
//     and restart on their data dirs.
//   - chaos/blackbox: 5 servers and 2 clients of bin/sidecar as processes
//     in network namespaces, with mutual TLS on the Raft/RPC port and an
//     encrypted gossip (or plain text, to compare), cut with iptables,
//     paused with SIGSTOP, killed and restarted; the kill -9 durability
//     series; DNS against the registry.
//
// Build tags chaosbug_<name> (readskipsleader, lockignoreslease,
// leaselocalclock, fenceskipsquorum; chaos/inproc/bugs_*.go lists them)
// plant known bugs in fsm and election; the suite must then report
// anomalies, in 3 of 4 runs of make chaos-bounded with CPU-bound busy
// loops beside them, and a run stops at its first anomaly (see
// mk/chaos.mk and chaos/README.md, "Sensitivity").
package chaos
