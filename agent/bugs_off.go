//go:build !chaosbug_ackbeforecommit

package agent

// bugAckBeforeCommit is a bug switch of the crash-point durability test
// (test/crash_test.go, make crashpoints-bug): built with tag
// chaosbug_ackbeforecommit, a registration through the API is answered
// before it is kept in the local state or committed through Raft (see
// registerAckedEarly). Always false in normal builds, so the compiler
// drops the branch.
const bugAckBeforeCommit = false
