package agent

import (
	"context"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/localstate"
)

// ackedEarly holds a slot for each registration answered and not yet
// written: the bug is a write-behind queue of 16, so that writers are held
// back at the pace of the real writes, as they are without the bug.
var ackedEarly = make(chan struct{}, 16)

// ackedEarlyLag is how long an answered registration waits in the queue.
const ackedEarlyLag = 5 * time.Millisecond

// registerAckedEarly is the bug of switch chaosbug_ackbeforecommit
// (bugs_off.go): the registration is answered at once, as if it were on
// disk and committed, and only then kept in the local state and written
// through Raft, in the background. A crash before the background write
// reaches the local state's fsync loses a registration its app was told
// succeeded; the crash-point test must catch it.
func (a *Agent) registerAckedEarly(ctx context.Context, in fsm.Instance) (*fsm.Result, error) {
	select {
	case ackedEarly <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	go func() {
		defer func() { <-ackedEarly }()
		// The queue writes a little behind: without it, on a loaded
		// machine whose writers come slowly, every answered registration
		// could reach the local state's fsync before the crash and the
		// bug would go unseen (once in a CI run under load).
		time.Sleep(ackedEarlyLag)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := a.register(ctx, in, localstate.SourceAPI); err != nil {
			a.log.Warn("registration already acknowledged failed", "instance", in.ID, "err", err)
		}
	}()
	return &fsm.Result{Index: a.reg.Index()}, nil
}
