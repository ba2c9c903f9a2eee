//go:build chaosbug_leaselocalclock && !chaosbug_readskipsleader

package election

// See bugs_off.go. This build carries the bug on purpose.
const (
	bugReadSkipsLeaderCheck = false
	bugLeaseLocalClock      = true
)
