//go:build chaosbug_lockignoreslease

package fsm

// bugLockIgnoresLease: see bugs_off.go. This build carries the bug on
// purpose, to prove that chaos/ detects it.
const bugLockIgnoresLease = true
