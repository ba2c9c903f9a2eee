//go:build !chaosbug_fenceskipsquorum

package election

// bugFenceSkipsQuorum is a bug switch of the fault-injection suite
// (chaos/): built with tag chaosbug_fenceskipsquorum, a fence check answers
// from this sidecar's copy of the registry without a quorum's confirmation
// (no read index), so a stale copy calls an old token current. Always
// false in normal builds, so the compiler drops the branch.
const bugFenceSkipsQuorum = false
