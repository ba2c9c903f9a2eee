package election_test

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/election/electiontest"
	"github.com/sidecarhq/sidecar/fsm"
)

// A leader closed while keepalives wait for its leadership to be confirmed
// leaves no confirmation round behind: hashicorp/raft never answers a
// VerifyLeader queued as it shuts down, so a round started then would wait
// for ever.
func TestServer_closeDuringKeepalivesLeavesNoRound(t *testing.T) {
	for trial := 0; trial < 5; trial++ {
		c := electiontest.NewCluster(t, 3, nil)
		leader := c.WaitLeader(10 * time.Second)
		ctx, cancel := context.WithCancel(context.Background())
		res, err := leader.Apply(ctx, &fsm.GrantLease{TTL: int64(10 * time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					if _, err := leader.KeepAlive(ctx, res.LeaseID); err != nil && ctx.Err() == nil &&
						!strings.Contains(err.Error(), "shut") && !strings.Contains(err.Error(), "leader") {
						t.Errorf("keepalive: %v", err)
						return
					}
				}
			}()
		}
		time.Sleep(time.Duration(trial) * 7 * time.Millisecond) // different moments of the rounds
		leader.Close()
		cancel()
		wg.Wait()
		deadline := time.Now().Add(5 * time.Second)
		for rounds() > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("trial %d: a leadership confirmation round outlived its server", trial)
			}
			time.Sleep(10 * time.Millisecond)
		}

	}

}

// rounds counts goroutines running confirmation rounds.
func rounds() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "runLeaderChecks")
}
