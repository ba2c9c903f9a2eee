package raftlog

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/hashicorp/raft"
)

// holdSyncs returns options whose background syncs wait until release is
// called (at the latest when the test ends).
func holdSyncs(t *testing.T, opts Options) (_ Options, release func()) {
	t.Helper()
	gate := make(chan struct{})
	opts.BeforeSync = func(stop <-chan struct{}) {
		select {
		case <-gate:
		case <-stop:
		}
	}
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release)
	return opts, release
}

func deferAlways(s *Store) { s.DeferSyncWhile(func() bool { return true }) }

// A leader's append returns before its sync: the entries are readable at
// once (Raft sends them to the followers from the store), and Durable
// moves only when the sync is done.
func TestStoreLogs_deferredAppendIsReadableAtOnceAndDurableAfterItsSync(t *testing.T) {
	dir := t.TempDir()
	opts, release := holdSyncs(t, Options{SegmentSize: 1 << 20})
	s := open(t, dir, opts)
	store(t, s, 1, 3)
	if d := s.Durable(); d != 3 {
		t.Fatalf("durable %d after synced appends of 1-3", d)
	}
	deferAlways(s)
	store(t, s, 4, 20)
	check(t, s, 1, 20)
	if d := s.Durable(); d != 3 {
		t.Fatalf("durable %d before the deferred appends' sync, want 3", d)
	}
	release()
	if err := s.WaitDurable(20); err != nil {
		t.Fatal(err)
	}
	if d := s.Durable(); d != 20 {
		t.Fatalf("durable %d after the sync, want 20", d)
	}
	s.Close()
	check(t, open(t, dir, Options{SegmentSize: 1 << 20}), 1, 20)
}

// The condition is asked on every append: when it stops holding (the
// server no longer leads), appends are synced before they return, and
// with them every deferred one before.
func TestStoreLogs_appendThatIsNotDeferredSyncsTheDeferredOnes(t *testing.T) {
	opts, _ := holdSyncs(t, Options{SegmentSize: 1 << 20})
	s := open(t, t.TempDir(), opts)
	var leads bool
	s.DeferSyncWhile(func() bool { return leads })
	leads = true
	store(t, s, 1, 5)
	if d := s.Durable(); d != 0 {
		t.Fatalf("durable %d with every append deferred", d)
	}
	leads = false
	store(t, s, 6, 6)
	if d := s.Durable(); d != 6 {
		t.Fatalf("durable %d after an append that was not deferred, want 6", d)
	}
}

// A configuration entry is never deferred: Raft starts the next
// membership change once one is committed, so it must be on the leader's
// disk when the leader counts itself.
func TestStoreLogs_configurationEntriesAreNeverDeferred(t *testing.T) {
	opts, _ := holdSyncs(t, Options{SegmentSize: 1 << 20})
	s := open(t, t.TempDir(), opts)
	deferAlways(s)
	store(t, s, 1, 2)
	for _, typ := range []raft.LogType{raft.LogNoop, raft.LogBarrier} {
		l := entry(3)
		l.Type = typ
		if err := s.StoreLogs([]*raft.Log{l}); err != nil {
			t.Fatal(err)
		}
		if d := s.Durable(); d != 0 {
			t.Fatalf("a %v entry was synced before it returned (durable %d)", typ, d)
		}
		if err := s.DeleteRange(3, 3); err != nil {
			t.Fatal(err)
		}
	}
	conf := entry(4)
	conf.Type = raft.LogConfiguration
	if err := s.StoreLogs([]*raft.Log{entry(3), conf}); err != nil {
		t.Fatal(err)
	}
	if d := s.Durable(); d != 4 {
		t.Fatalf("durable %d after a batch with a configuration entry, want 4", d)
	}
}

// Entries a new leader overwrites leave durable behind: a sync that covered
// them must not count for the entries written at their indexes again.
func TestDeleteRange_cutEntriesAreNotDurable(t *testing.T) {
	opts, release := holdSyncs(t, Options{SegmentSize: 1 << 20})
	s := open(t, t.TempDir(), opts)
	store(t, s, 1, 8)
	if err := s.DeleteRange(6, 8); err != nil {
		t.Fatal(err)
	}
	if d := s.Durable(); d != 5 {
		t.Fatalf("durable %d after cutting 6-8, want 5", d)
	}
	deferAlways(s)
	store(t, s, 6, 9)
	if err := s.DeleteRange(8, 9); err != nil {
		t.Fatal(err)
	}
	release()
	if err := s.WaitDurable(7); err != nil {
		t.Fatal(err)
	}
	if d := s.Durable(); d != 7 {
		t.Fatalf("durable %d: the sync counted entries cut before it, want 7", d)
	}
	// Compaction of a synced prefix leaves durable where it was.
	if err := s.DeleteRange(1, 4); err != nil {
		t.Fatal(err)
	}
	if d := s.Durable(); d != 7 {
		t.Fatalf("durable %d after compaction, want 7", d)
	}
}

// A background sync that fails is fatal: waiters are told, durable stays
// before the entries it could not sync, and no write is taken after it.
func TestStoreLogs_failedBackgroundSyncIsFatal(t *testing.T) {
	fatal := make(chan error, 4)
	opts, release := holdSyncs(t, Options{SegmentSize: 1 << 20, Fatal: func(err error) { fatal <- err }})
	s := open(t, t.TempDir(), opts)
	store(t, s, 1, 2)
	deferAlways(s)
	store(t, s, 3, 5)
	s.segs[0].f.Close() // the sync now fails as an I/O error would
	release()
	if err := s.WaitDurable(5); err == nil {
		t.Fatal("waiting for entries whose sync failed succeeded")
	}
	if err := <-fatal; err == nil {
		t.Fatal("no fatal error")
	}
	if d := s.Durable(); d != 2 {
		t.Fatalf("durable %d after the failed sync, want 2", d)
	}
	if err := s.StoreLogs([]*raft.Log{entry(6)}); err == nil {
		t.Fatal("a write after the failed sync was taken")
	}
	if err := s.DeleteRange(1, 1); err == nil {
		t.Fatal("a deletion after the failed sync was taken")
	}
}

// Close ends every wait; what deferred appends wrote is synced first.
func TestStore_closeEndsWaitsAndSyncsDeferredAppends(t *testing.T) {
	dir := t.TempDir()
	opts, _ := holdSyncs(t, Options{SegmentSize: 1 << 20})
	s := open(t, dir, opts)
	deferAlways(s)
	store(t, s, 1, 4)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := s.Durable(); d != 4 {
		t.Fatalf("durable %d after Close, want 4", d)
	}
	if err := s.WaitDurable(5); !errors.Is(err, errClosed) {
		t.Fatalf("a wait past the end after Close: %v", err)
	}
	check(t, open(t, dir, Options{SegmentSize: 1 << 20}), 1, 4)
}

// Deferred appends as a leader makes them, with a waiter per entry as the
// leader's apply is: every wait ends, in order, and the log reopens whole.
func TestStoreLogs_deferredAppendsWithWaiters(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{SegmentSize: 64 << 10}) // several segments
	deferAlways(s)
	const n = 2000
	var wg sync.WaitGroup
	wg.Add(1)
	errs := make(chan error, 1)
	go func() {
		defer wg.Done()
		for i := uint64(1); i <= n; i++ {
			if err := s.WaitDurable(i); err != nil {
				errs <- err
				return
			}
			if d := s.Durable(); d < i {
				errs <- fmt.Errorf("wait for %d ended at durable %d", i, d)
				return
			}
		}
	}()
	store(t, s, 1, n)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	s.Close()
	check(t, open(t, dir, Options{SegmentSize: 64 << 10}), 1, n)
}
