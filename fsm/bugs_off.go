//go:build !chaosbug_lockignoreslease

package fsm

// bugLockIgnoresLease is a bug switch of the fault-injection suite (chaos/):
// built with tag chaosbug_lockignoreslease, a lock is granted without
// checking that its lease exists. Always false in normal builds, so the
// compiler drops the branch.
const bugLockIgnoresLease = false
