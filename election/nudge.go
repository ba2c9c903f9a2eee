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
// makes). So when the last write in flight ends, the leader appends a
// barrier: it changes nothing in the registry, and its append carries the
// commit index to every follower at once. Under load the writes still in
// flight do that anyway and no barrier is added.
//
// A write whose writer reads from the leader's own registry (an app on the
// leader's agent, or a client agent whose copy streams from the leader)
// does not need the barrier itself, and a barrier right behind it is in
// the way of that writer's next write (one more log flush on every server
// before the next append). Its nudge is held back for nudgeLater and
// dropped if a write is in flight by then (that write asks when it ends),
// so a sequential writer (a lock taken then released) adds no barrier
// while it keeps writing. Watchers on followers still learn of the write
// within nudgeLater.

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

// beginWrite counts a write on its way into the log; endWrite asks for its
// nudge.
func (s *Server) beginWrite() { s.writing.Add(1) }

// endWrite ends a write that beginWrite counted; later: its writer reads
// the leader's registry. Only the last write in flight asks for a nudge:
// every write still in flight asks when it ends, and its append or its
// nudge's comes after this write committed. (An entry that merely follows
// in the log does not do: it may have been sent before this write
// committed, and a barrier asks for no nudge of its own.) A failed write
// asks too, for the writes that left the asking to it.
func (s *Server) endWrite(later bool) {
	if !later {
		s.nudgeUrgent.Store(true)
	}
	if s.writing.Add(-1) > 0 {
		return
	}
	if s.nudgeUrgent.Swap(false) {
		s.nudgeNow()
		return
	}
	select {
	case s.nudgeLater <- struct{}{}:
	default: // one is held already: it comes after this write too
	}
}

// nudgeNow asks for a barrier at once.
func (s *Server) nudgeNow() {
	select {
	case s.nudge <- struct{}{}:
	default: // one is asked for already: it comes after this point too
	}
}

// runNudges hands Raft the barriers endWrite and nudgeNow ask for, one at a
// time. It does not wait for a barrier to commit: the future of an entry
// committed just as Raft shuts down may never be answered, and Close waits
// for this loop. Its append is what tells the followers.
func (s *Server) runNudges() {
	defer s.wg.Done()
	held := time.NewTimer(time.Hour)
	held.Stop()
	holding := false
	barrier := func() {
		if s.alone() {
			return // no follower to tell
		}
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
			// This barrier covers a held-back nudge too (and a stopped
			// timer sends nothing after Stop: Go 1.23 timers).
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
			// A write in flight asks for its own nudge when it ends.
			if s.writing.Load() == 0 {
				barrier()
			}
		}
	}
}

// alone reports whether this server is the only one in the latest Raft
// configuration: a commit then has no follower to reach, and a barrier
// would only cost a log write.
func (s *Server) alone() bool {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	return len(f.Configuration().Servers) <= 1
}
