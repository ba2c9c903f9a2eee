package election

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// memSnapshots keeps the newest snapshot of an in-memory server (dev mode
// and the tests). raft's own InmemSnapshotStore makes a snapshot the latest
// as soon as it is created, while the leader is still writing it, so a
// replication goroutine that opened it then could send a follower a part
// of a snapshot (and races the writer for its buffer). Here a snapshot is
// listed and opened only once its sink is closed, as the file store does
// by renaming a finished snapshot into place.
type memSnapshots struct {
	mu     sync.RWMutex
	latest *memSnapshot  // nil until a first snapshot is closed
	seq    atomic.Uint64 // keeps IDs apart, as the file store's timestamp does
}

type memSnapshot struct {
	meta raft.SnapshotMeta
	data []byte // never changed once published
}

func newMemSnapshots() *memSnapshots { return &memSnapshots{} }

// Create starts a snapshot; nothing sees it until its sink is closed.
func (m *memSnapshots) Create(version raft.SnapshotVersion, index, term uint64, conf raft.Configuration, confIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	if version != 1 {
		return nil, fmt.Errorf("unsupported snapshot version %d", version)
	}
	return &memSnapshotSink{store: m, meta: raft.SnapshotMeta{
		Version: version,
		ID:      fmt.Sprintf("%d-%d-%d", term, index, m.seq.Add(1)),
		Index:   index,
		Term:    term,
		// Peers is the pre-version-1 form of Configuration, which raft
		// reads only from snapshots older than it writes.
		Configuration:      conf,
		ConfigurationIndex: confIndex,
	}}, nil
}

func (m *memSnapshots) List() ([]*raft.SnapshotMeta, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.latest == nil {
		return nil, nil
	}
	meta := m.latest.meta
	return []*raft.SnapshotMeta{&meta}, nil
}

func (m *memSnapshots) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.latest == nil || m.latest.meta.ID != id {
		return nil, nil, fmt.Errorf("open snapshot %s: not the latest snapshot", id)
	}
	meta := m.latest.meta
	return &meta, io.NopCloser(bytes.NewReader(m.latest.data)), nil
}

type memSnapshotSink struct {
	store *memSnapshots
	meta  raft.SnapshotMeta
	buf   bytes.Buffer
	done  bool
}

func (s *memSnapshotSink) Write(p []byte) (int, error) {
	if s.done {
		return 0, fmt.Errorf("write snapshot %s: already closed", s.meta.ID)
	}
	return s.buf.Write(p)
}

// Close publishes the snapshot as the latest.
func (s *memSnapshotSink) Close() error {
	if s.done {
		return nil
	}
	s.done = true
	s.meta.Size = int64(s.buf.Len())
	snap := &memSnapshot{meta: s.meta, data: s.buf.Bytes()}
	s.store.mu.Lock()
	s.store.latest = snap
	s.store.mu.Unlock()
	return nil
}

func (s *memSnapshotSink) ID() string { return s.meta.ID }

// Cancel drops the snapshot: the latest stays what it was.
func (s *memSnapshotSink) Cancel() error {
	s.done = true
	return nil
}
