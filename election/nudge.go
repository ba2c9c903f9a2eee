package election

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

// nudgeFollowers asks for a barrier unless an entry after index exists.
func (s *Server) nudgeFollowers(index uint64) {
	if s.raft.LastIndex() > index {
		return
	}
	select {
	case s.nudge <- struct{}{}:
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
	for {
		select {
		case <-s.stop:
			return
		case <-s.nudge:
			s.m.commitNudges.Inc()
			// Barrier returns once the leader loop took it (a follower or a
			// stopped Raft refuses it at once); a barrier refused only
			// means the followers learn from the next append.
			s.raft.Barrier(s.cfg.ApplyTimeout)
		}
	}
}
