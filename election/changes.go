package election

import (
	"io"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/internal/crashpoint"
)

// changeLog keeps the most recent entries a server applied, so that a
// client's change stream resumes from its index without a snapshot when it
// was away briefly.
type changeLog struct {
	mu      sync.Mutex
	entries []change
	limit   int
	// dropped is the highest index no longer kept: a follower behind it
	// needs a snapshot.
	dropped uint64
	notify  chan struct{}
}

type change struct {
	index uint64
	data  []byte
}

func newChangeLog(limit int) *changeLog {
	return &changeLog{limit: limit, notify: make(chan struct{})}
}

func (c *changeLog) append(index uint64, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.limit {
		n := len(c.entries) / 4
		c.dropped = c.entries[n-1].index
		c.entries = append(c.entries[:0:0], c.entries[n:]...)
	}
	c.entries = append(c.entries, change{index, data})
	close(c.notify)
	c.notify = make(chan struct{})
}

// reset forgets everything up to index (after a snapshot restore).
func (c *changeLog) reset(index uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries = nil
	c.dropped = index
	close(c.notify)
	c.notify = make(chan struct{})
}

// covers reports whether every entry after index is still kept.
func (c *changeLog) covers(index uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return index >= c.dropped
}

// since returns the entries after index and a channel closed at the next
// append; ok is false when entries after index were dropped.
func (c *changeLog) since(index uint64) (out []change, notify <-chan struct{}, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if index < c.dropped {
		return nil, c.notify, false
	}
	for i := len(c.entries) - 1; i >= 0 && c.entries[i].index > index; i-- {
		out = append(out, c.entries[i])
	}
	// equivalent mutant: at i == j the middle entry swaps with itself
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, c.notify, true
}

// recordingFSM is the registry as Raft drives it on a server: every applied
// command also goes to the change log that clients stream from.
type recordingFSM struct {
	*fsm.FSM
	log *changeLog
	// durable, when set, waits until the entry at an index is on this
	// server's disk: a leader's log write overlaps its replication (see
	// raftlog.Store.DeferSyncWhile), and Raft may count the leader's copy
	// toward a commit before it is synced. Nothing is applied (and so
	// nothing answered or streamed) before it is.
	durable func(index uint64) error
}

func (r *recordingFSM) Apply(l *raft.Log) interface{} {
	if r.durable != nil {
		if err := r.durable(l.Index); err != nil {
			// The log could not be synced (the server is stopping):
			// applying the entry would show what a power loss may undo.
			r.FSM.Halt(l.Index, err)
			return &fsm.Result{Index: l.Index, Err: r.FSM.Err()}
		}
	}
	// An entry the registry applied already (replayed after an older
	// snapshot, see fsm.FSM.RestoreNewer) is not streamed twice.
	fresh := l.Index > r.FSM.Index()
	res := r.FSM.Apply(l)
	if fresh && l.Type == raft.LogCommand {
		r.log.append(l.Index, l.Data)
	}
	return res
}

func (r *recordingFSM) Restore(rc io.ReadCloser) error {
	restored, err := r.FSM.RestoreNewer(crashReader{rc})
	if err != nil {
		return err
	}
	if restored {
		r.log.reset(r.FSM.Index())
	}
	return nil
}

// Snapshot wraps the registry's snapshot so the durability tests can crash
// a server half way through writing it.
func (r *recordingFSM) Snapshot() (raft.FSMSnapshot, error) {
	snap, err := r.FSM.Snapshot()
	if err != nil {
		return nil, err
	}
	return crashSnapshot{snap}, nil
}

type crashSnapshot struct{ raft.FSMSnapshot }

func (c crashSnapshot) Persist(sink raft.SnapshotSink) error {
	return c.FSMSnapshot.Persist(&crashSink{SnapshotSink: sink})
}

// crashSink reaches the snapshot-write crash point once some of the
// snapshot is written.
type crashSink struct {
	raft.SnapshotSink
	n int
}

func (c *crashSink) Write(p []byte) (int, error) {
	n, err := c.SnapshotSink.Write(p)
	// equivalent mutant: where in a snapshot the crash point fires is arbitrary (and off outside the crash tests)
	if c.n += n; c.n >= 4096 {
		crashpoint.Hit("snapshot-write")
	}
	return n, err
}

// crashReader reaches the snapshot-install crash point once the follower
// has read part of the snapshot it installs.
type crashReader struct{ io.ReadCloser }

func (c crashReader) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	// equivalent mutant: a crash point, off outside the crash tests
	if n > 0 {
		crashpoint.Hit("snapshot-install")
	}
	return n, err
}
