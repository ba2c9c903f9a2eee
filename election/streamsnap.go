package election

import (
	"sync"
	"time"
)

// streamSnapshotTTL is how long an encoded snapshot serves new change
// streams. Clients that resubscribe together (after a leader change, a
// server restart) share one encoding instead of one each; it is then let
// go, so a large registry's snapshot does not stay in memory.
const streamSnapshotTTL = 5 * time.Second

// streamSnapshots encodes the registry for change streams, one encoding for
// every stream that asks while it is fresh and the change log still holds
// every entry after it.
type streamSnapshots struct {
	mu    sync.Mutex // held while encoding: concurrent askers wait, then share
	data  []byte
	index uint64
	at    time.Time
	timer *time.Timer
}

// get returns a snapshot and its index, encoding one only when the one held
// is stale: older than streamSnapshotTTL, or older than the entries the
// change log still has (a stream resumes from the snapshot's index).
func (s *Server) streamSnapshot() ([]byte, uint64, error) {
	c, ttl := &s.snaps, s.cfg.streamSnapshotTTL
	c.mu.Lock()
	defer c.mu.Unlock()
	// equivalent mutant: a snapshot exactly streamSnapshotTTL old, to the nanosecond
	if c.data != nil && time.Since(c.at) < ttl && s.changes.covers(c.index) {
		return c.data, c.index, nil
	}
	data, idx, err := s.fsm.SnapshotBytes()
	if err != nil {
		return nil, 0, err
	}
	s.m.streamSnapshots.Inc()
	c.data, c.index, c.at = data, idx, time.Now()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.timer = time.AfterFunc(ttl, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		// equivalent mutant: when the cached snapshot's memory is let go, to the nanosecond
		if time.Since(c.at) >= ttl {
			c.data = nil
		}
	})
	return data, idx, nil
}
