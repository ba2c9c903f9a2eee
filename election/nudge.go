package election

import (
	"context"
	"time"
)

// A follower learns that an entry committed only from the leader's next
// append, and hashicorp/raft sends one when new entries come or, without
// any, after CommitTimeout to twice that (20-40 ms). An agent answers a
// lock, election or lease write once its own copy holds it, so through a
// follower (or a client agent streaming from one) the last write before a
// pause waited out that timer: an uncontended lock pair through a follower
// took 66 ms against 3.4 ms through the leader, and handovers through
// followers lagged the same way (also those the leader's own lease expiry
// makes). So when a write is, once applied, still the newest entry of the
// log, the leader appends a barrier: it changes nothing in the registry,
// and its append carries the commit index to every follower at once.
// Under load a later write does that anyway and no barrier is added.
//
// A write whose writer reads from the leader's own registry (an app on the
// leader's agent, or a client agent whose copy streams from the leader)
// does not need the barrier itself, and a barrier right behind it is in
// the way of that writer's next write (one more log flush on every server
// before the next append). Its nudge is held back for nudgeLater; a write
// appended meanwhile carries the commit index instead, so a sequential
// writer (a lock taken then released) adds no barrier at all. Watchers on
// followers still learn of the write within nudgeLater.

// nudgeLater is how long a nudge for a leader-fed writer is held back: a
// little more than the round trip of a sequential writer's next write.
const nudgeLater = time.Millisecond

// leaderFedKey marks a write whose writer reads from this leader's
// registry (see withLeaderFed).
type leaderFedKey struct{}

// withLeaderFed marks ctx's write as one whose writer reads from the
// leader's own registry: its nudge may wait.
func withLeaderFed(ctx context.Context) context.Context {
	return context.WithValue(ctx, leaderFedKey{}, true)
}

func leaderFed(ctx context.Context) bool {
	v, _ := ctx.Value(leaderFedKey{}).(bool)
	return v
}

// nudgeFollowers asks for a barrier unless an entry after index exists: at
// once, or when later (a leader-fed writer), after nudgeLater.
func (s *Server) nudgeFollowers(index uint64, later bool) {
	if s.raft.LastIndex() > index {
		return
	}
	ch := s.nudge
	if later {
		// The held-back nudge looks at the newest index asked for when
		// it ends, not at the one that started it.
		for {
			asked := s.nudgeAsked.Load()
			// equivalent mutant: at asked == index the swap stores the same index
			if asked >= index || s.nudgeAsked.CompareAndSwap(asked, index) {
				break
			}
		}
		ch = s.nudgeLater
	}
	select {
	case ch <- struct{}{}:
	default: // one is asked for already: it covers this index too
	}
}

// runNudges hands Raft the barriers nudgeFollowers asks for, one at a
// time. It does not wait for a barrier to commit: the future of an entry
// committed just as Raft shuts down may never be answered, and Close waits
// for this loop. Its append is what tells the followers; and once it is
// appended, the writes before it no longer ask for another.
func (s *Server) runNudges() {
	defer s.wg.Done()
	held := time.NewTimer(time.Hour)
	held.Stop()
	holding := false
	barrier := func() {
		s.m.commitNudges.Inc()
		// Barrier returns once the leader loop took it (a follower or a
		// stopped Raft refuses it at once); a barrier refused only
		// means the followers learn from the next append.
		s.raft.Barrier(s.cfg.ApplyTimeout)
	}
	for {
		select {
		case <-s.stop:
			held.Stop()
			return
		case <-s.nudge:
			// This barrier covers a held-back nudge too.
			// A stopped timer sends nothing after Stop (Go 1.23 timers).
			held.Stop()
			holding = false
			barrier()
		case <-s.nudgeLater:
			if !holding {
				holding = true
				held.Reset(s.cfg.nudgeLater())
			}
		case <-held.C:
			holding = false
			// A write appended meanwhile told the followers (and is
			// nudged itself once applied).
			if s.raft.LastIndex() <= s.nudgeAsked.Load() {
				barrier()
			}
		}
	}
}
