//go:build !chaosbug_readskipsleader && !chaosbug_leaselocalclock

package election

// Bug switches of the fault-injection suite (chaos/), each turned on by a
// build tag and always false in normal builds, so the compiler drops the
// branches:
//   - bugReadSkipsLeaderCheck (chaosbug_readskipsleader): ConsistentRead
//     answers from the local registry without confirming leadership;
//   - bugLeaseLocalClock (chaosbug_leaselocalclock): a server that leads
//     again keeps the lease deadlines of its earlier term, measured on its
//     own wall clock, instead of restarting every lease's full TTL.
const (
	bugReadSkipsLeaderCheck = false
	bugLeaseLocalClock      = false
)
