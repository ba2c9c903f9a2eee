//go:build chaosbug_ackbeforecommit

package agent

// See bugs_off.go. This build carries the bug on purpose.
const bugAckBeforeCommit = true
