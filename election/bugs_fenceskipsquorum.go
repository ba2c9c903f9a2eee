//go:build chaosbug_fenceskipsquorum

package election

// See bugs_fence_off.go. This build carries the bug on purpose.
const bugFenceSkipsQuorum = true
