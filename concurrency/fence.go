package concurrency

import (
	"context"
	"fmt"

	"github.com/sidecarhq/sidecar/api"
)

// Kind says whether a fencing token is a lock's or an election's.
type Kind string

// Kinds of fencing tokens.
const (
	KindLock     Kind = "lock"
	KindElection Kind = "election"
)

// Fence asks the servers whether token is the fencing token of the live
// holder of the lock or election name, confirmed with a quorum
// (GET /v1/locks/{name}/fence or /v1/elections/{name}/fence). current is
// false when another acquisition (with currentToken, 0 when vacant) has
// taken over; that is an answer, not an error.
//
// Why: a holder's Done is its own view, and a holder paused for longer than
// its lease (a GC pause, a stopped VM) acts late on an old belief. A
// resource that keeps the highest token it has seen can refuse such a
// holder by itself; one that cannot (a file, a third-party API) asks Fence
// just before each action, and acts only when current.
func Fence(ctx context.Context, c *api.Client, kind Kind, name string, token uint64) (current bool, currentToken uint64, err error) {
	var r *api.FenceResult
	switch kind {
	case KindLock:
		r, err = c.LockFence(ctx, name, token)
	case KindElection:
		r, err = c.ElectionFence(ctx, name, token)
	default:
		return false, 0, fmt.Errorf("concurrency: fence %q: unknown kind %q", name, kind)
	}
	if err != nil {
		return false, 0, fmt.Errorf("concurrency: fence %s %q token %d: %w", kind, name, token, err)
	}
	return r.Current, r.Token, nil
}
