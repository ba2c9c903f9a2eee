// Package crashpoint kills the process at a named point of the write path,
// for the durability tests: SIDECAR_CRASHPOINT=name:n makes the n-th time
// the process reaches point name (n defaults to 1) a SIGKILL of itself,
// the crash a power cut or the kernel's OOM killer makes. Unset, a point
// costs one nil check.
//
// Points:
//
//	raft-log-appended   a batch of Raft entries is appended (a leader's sync
//	                    may be under way), not yet applied
//	snapshot-write      a snapshot is half written
//	snapshot-install    a follower is half way through installing a snapshot
//	localstate-written  a registration is in the local state, not yet in Raft
package crashpoint

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

type point struct {
	name string
	n    int64
	hits atomic.Int64
}

var armed = parse(os.Getenv("SIDECAR_CRASHPOINT"))

func parse(v string) *point {
	if v == "" {
		return nil
	}
	name, count, _ := strings.Cut(v, ":")
	n, err := strconv.ParseInt(count, 10, 64)
	if err != nil || n < 1 {
		n = 1
	}
	return &point{name: name, n: n}
}

// Hit is a crash point: the process dies here when armed for name.
func Hit(name string) {
	if armed == nil || armed.name != name {
		return
	}
	if armed.hits.Add(1) == armed.n {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
