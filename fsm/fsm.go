// Package fsm is sidecar's replicated registry: nodes, service instances and
// their check status, leases, locks and elections, and the fencing tokens
// handed out for them.
//
// The registry is a deterministic state machine. Apply reads no clock, draws
// no random number and does no I/O: every input it needs, the time included,
// is in the command, so that every replica that applies the same entries
// holds the same state. The package imports nothing of sidecar's and only
// raft's types.
package fsm

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
)

// Errors returned in Result.Err. Callers map them to HTTP codes with
// errors.Is.
var (
	ErrInvalid         = errors.New("fsm: invalid command")
	ErrUnknownNode     = errors.New("fsm: unknown node")
	ErrUnknownInstance = errors.New("fsm: unknown service instance")
	ErrUnknownCheck    = errors.New("fsm: unknown check")
	ErrUnknownLease    = errors.New("fsm: unknown lease")
	ErrUnknownLock     = errors.New("fsm: unknown lock")
	ErrUnknownElection = errors.New("fsm: unknown election")
	ErrNotHolder       = errors.New("fsm: lease does not hold the lock")
	ErrNotCandidate    = errors.New("fsm: not a candidate")
	ErrLeaseExists     = errors.New("fsm: lease exists")
	ErrCheckConflict   = errors.New("fsm: check id used by another instance")
	// ErrChanged: a conditional write found the instance changed since
	// its writer looked.
	ErrChanged = errors.New("fsm: instance changed since it was read")
	// ErrNotOwner: the lease or candidate belongs to another token.
	ErrNotOwner        = errors.New("fsm: permission denied")
	ErrACLBootstrapped = errors.New("fsm: acl bootstrapped already")
	ErrTokenExists     = errors.New("fsm: acl token exists")
	ErrUnknownToken    = errors.New("fsm: unknown acl token")
	// ErrStaleToken: a token-guarded release named a token that is not the
	// lock's current acquisition (released and taken again since).
	ErrStaleToken = errors.New("fsm: token is not the current acquisition")
	// ErrNotLeading: a transfer's From does not lead the election, or
	// leads it through another sidecar.
	ErrNotLeading = errors.New("fsm: candidate does not lead here")
	// ErrHalted: the registry met a committed entry it cannot decode and
	// applies nothing more (see ApplyBytes). Not a refusal: the server
	// must stop.
	ErrHalted = errors.New("fsm: registry halted")
)

// Refused reports whether err is the registry refusing a command: it
// was applied at an index and changed nothing, so nothing of it is still
// on its way (unlike a lost leader or a timeout).
func Refused(err error) bool {
	for _, e := range []error{ErrInvalid, ErrUnknownNode, ErrUnknownInstance, ErrUnknownCheck, ErrUnknownLease,
		ErrUnknownLock, ErrUnknownElection, ErrNotHolder, ErrNotCandidate, ErrLeaseExists, ErrCheckConflict, ErrChanged,
		ErrNotOwner, ErrACLBootstrapped, ErrTokenExists, ErrUnknownToken, ErrStaleToken, ErrNotLeading} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Result is what applying one command produced.
type Result struct {
	Index uint64
	Err   error
	// LeaseID is the ID of a granted lease.
	LeaseID string
	// Held reports, for lock and campaign commands, whether the lease or
	// candidate now holds the mutex, and Token its fencing token.
	Held  bool
	Token uint64
	// Holder is the mutex's holder after the command (nil when vacant).
	Holder *Holder
}

// Table names a part of the registry with an index of its own, the index of
// the last entry that changed it. Blocking queries wait on a table's index.
type Table int

// Tables of the registry.
const (
	TableNodes Table = iota
	TableServices
	TableLeases
	TableLocks
	TableElections
	TableACL
	numTables
)

// FSM is the registry. It implements raft.FSM and may be read from any
// goroutine while Raft applies entries.
type FSM struct {
	mu      sync.RWMutex
	st      *state
	changed chan struct{}
	// halted, once set, is why the registry applies nothing more; haltCh
	// is closed then.
	halted error
	haltCh chan struct{}

	// watchers are the channels of blocking reads of one table, service,
	// lock or election, closed when it changes. They are made on demand and
	// dropped when closed, so a thousand blocked reads of a thousand
	// services cost a thousand channels, and a write wakes only its own.
	wmu      sync.Mutex
	watchers map[watchKey]chan struct{}

	// The last digest, of the state (replaced by a restore) at an index.
	digestMu    sync.Mutex
	digestState *state
	digestIndex uint64
	digestValue string
}

type watchKind byte

const (
	watchTable watchKind = iota
	watchService
	watchLock
	watchElection
)

type watchKey struct {
	kind  watchKind
	table Table
	name  string
}

// New returns an empty registry.
func New() *FSM {
	return &FSM{st: newState(), changed: make(chan struct{}), haltCh: make(chan struct{}), watchers: map[watchKey]chan struct{}{}}
}

// watch returns the channel closed at the next change of key.
func (f *FSM) watch(key watchKey) <-chan struct{} {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	ch, ok := f.watchers[key]
	if !ok {
		ch = make(chan struct{})
		f.watchers[key] = ch
	}
	return ch
}

// wake closes the channels of what the last entry touched; with all, every
// channel (a restore may have changed anything). Callers hold f.mu.
func (f *FSM) wake(touched []watchKey, all bool) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if all {
		for _, ch := range f.watchers {
			close(ch)
		}
		clear(f.watchers)
		return
	}
	for _, k := range touched {
		if ch, ok := f.watchers[k]; ok {
			close(ch)
			delete(f.watchers, k)
		}
	}
}

// WatchTable returns a channel closed at the next change of a table.
func (f *FSM) WatchTable(t Table) <-chan struct{} {
	return f.watch(watchKey{kind: watchTable, table: t})
}

// WatchService returns a channel closed at the next change of a service's
// instances or their health (name matched without regard to case).
func (f *FSM) WatchService(name string) <-chan struct{} {
	return f.watch(watchKey{kind: watchService, name: strings.ToLower(name)})
}

// WatchLock returns a channel closed at the next change of a lock.
func (f *FSM) WatchLock(name string) <-chan struct{} {
	return f.watch(watchKey{kind: watchLock, name: name})
}

// WatchElection returns a channel closed at the next change of an election.
func (f *FSM) WatchElection(name string) <-chan struct{} {
	return f.watch(watchKey{kind: watchElection, name: name})
}

// ServiceIndex is the index of the last entry that changed a service's
// instances or their health. A service never seen reports the index of the
// snapshot the registry was restored from (0 when none).
func (f *FSM) ServiceIndex(name string) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if idx, ok := f.st.svcIndex[strings.ToLower(name)]; ok {
		return idx
	}
	return f.st.floor
}

// LockIndex is the index of the last entry that changed a lock (the
// restore's index for one never seen).
func (f *FSM) LockIndex(name string) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if m, ok := f.st.locks[name]; ok {
		return max(m.ModifyIndex, f.st.floor)
	}
	return f.st.floor
}

// ElectionIndex is the index of the last entry that changed an election
// (the restore's index for one never seen).
func (f *FSM) ElectionIndex(name string) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if m, ok := f.st.elections[name]; ok {
		return max(m.ModifyIndex, f.st.floor)
	}
	return f.st.floor
}

// Watch returns a channel closed at the next change of the registry. Take it
// before reading, so that a change between the read and the wait is seen.
func (f *FSM) Watch() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

// Index is the index of the last entry applied.
func (f *FSM) Index() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.index
}

// TableIndex is the index of the last entry that changed a table.
func (f *FSM) TableIndex(t Table) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if t < 0 || t >= numTables {
		return 0
	}
	return f.st.tables[t]
}

// ApplyBytes applies one encoded command at a log index. A command that is
// not valid in the current state changes nothing and reports why in
// Result.Err.
//
// An entry that does not decode halts the registry: it is not applied (the
// index stays before it), it and every later entry return an error
// wrapping ErrHalted, Snapshot and Restore refuse, and Halted is closed.
// Skipping it instead would let this replica differ from one that decodes
// it (a newer version that knows a new command, or a replica whose copy
// of the entry is not damaged), with nothing to tell. Leaders check that a
// command decodes before they commit it, so a committed entry that does
// not decode is a version this one does not know or damage in this
// replica's log; the server stops and its operator upgrades it or has it
// copy the registry again (see the agent).
func (f *FSM) ApplyBytes(index uint64, data []byte) *Result {
	cmd, err := Decode(data)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.halted != nil {
		return &Result{Index: index, Err: f.halted}
	}
	// equivalent mutant: Raft entries start at index 1, so index <= 0 never comes
	if index <= f.st.index && f.st.index > 0 {
		// Applied already: Raft replays entries after a snapshot older than
		// this registry (see Restore). Every replica applied the same entry.
		return &Result{Index: index}
	}
	if err != nil {
		f.haltLocked(index, err)
		return &Result{Index: index, Err: f.halted}
	}
	f.st.index = index
	f.st.touched = f.st.touched[:0]
	res, changed := f.st.apply(index, cmd)
	res.Index = index
	if changed {
		close(f.changed)
		f.changed = make(chan struct{})
		f.wake(f.st.touched, false)
	}
	return res
}

// Halt halts the registry before the entry at index, as an entry that
// does not decode does (see ApplyBytes): for a server that cannot vouch
// for that entry (its own log failed to reach the disk).
func (f *FSM) Halt(index uint64, why error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.halted == nil {
		f.haltLocked(index, why)
	}
}

func (f *FSM) haltLocked(index uint64, why error) {
	f.halted = fmt.Errorf("%w at entry %d (the last applied is %d): %w", ErrHalted, index, f.st.index, why)
	close(f.haltCh)
}

// Halted is closed when the registry halts (see ApplyBytes).
func (f *FSM) Halted() <-chan struct{} { return f.haltCh }

// Err is why the registry halted, or nil.
func (f *FSM) Err() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.halted
}

// Apply implements raft.FSM.
func (f *FSM) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		return &Result{Index: l.Index}
	}
	return f.ApplyBytes(l.Index, l.Data)
}

// Snapshot implements raft.FSM: it copies the state under the read lock and
// leaves the encoding to Persist, off Raft's apply path.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.halted != nil {
		// Raft would label the snapshot with its applied index, past the
		// entry this registry did not apply, and compact that entry away.
		return nil, f.halted
	}
	return &fsmSnapshot{data: f.st.export()}, nil
}

// Restore implements raft.FSM: see RestoreNewer.
func (f *FSM) Restore(rc io.ReadCloser) error {
	_, err := f.RestoreNewer(rc)
	return err
}

// RestoreNewer replaces the registry with a snapshot, unless the snapshot
// is older than the registry: hashicorp/raft has a follower install
// whatever snapshot its leader sends, even one taken before entries the
// follower already applied, and then replays the entries after it. Keeping
// the newer state (those entries are committed, so every replica applies
// the same ones) and skipping the replayed entries in ApplyBytes means a
// registry never goes back in time: no instance deregistered a moment ago
// reappears in DNS, no expired lease comes back. A user's restore is made
// newer than everything (election.Server.RestoreSnapshot, Reindex). The
// snapshot is checked in full first: a corrupt one leaves the state as it
// was.
func (f *FSM) RestoreNewer(rc io.ReadCloser) (restored bool, err error) {
	defer rc.Close()
	st, err := readSnapshot(rc)
	if err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.halted != nil {
		return false, f.halted
	}
	if st.index < f.st.index {
		return false, nil
	}
	// Journals go on, but cannot tell what the restore changed.
	for node := range f.st.tracked {
		st.tracked[node] = &nodeJournal{from: st.index}
	}
	f.st = st
	close(f.changed)
	f.changed = make(chan struct{})
	f.wake(nil, true)
	return true, nil
}

// WriteSnapshot writes the current state in the snapshot format.
func (f *FSM) WriteSnapshot(w io.Writer) error {
	f.mu.RLock()
	data := f.st.export()
	f.mu.RUnlock()
	return writeSnapshot(w, data)
}

// Digest is a hash of the registry's content (not its indexes), equal on
// every replica that applied the same entries. It is computed once per
// registry index: status requests polled against a large registry do not
// each copy and encode all of it.
func (f *FSM) Digest() string {
	f.mu.RLock()
	st, idx := f.st, f.st.index
	f.mu.RUnlock()
	f.digestMu.Lock()
	defer f.digestMu.Unlock()
	if f.digestState == st && f.digestIndex == idx {
		return f.digestValue
	}
	f.mu.RLock()
	data := f.st.export()
	st, idx = f.st, f.st.index
	f.mu.RUnlock()
	f.digestState, f.digestIndex, f.digestValue = st, idx, data.digest()
	return f.digestValue
}

type fsmSnapshot struct{ data *snapshotData }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := writeSnapshot(sink, s.data); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}
