package election

import (
	"io"
	"sync"
	"testing"

	"github.com/hashicorp/raft"
)

// A snapshot being written is not yet the latest: a replication goroutine
// that opened it then would send a follower part of it. It becomes the
// latest, whole, when its sink closes; a cancelled one never does.
func TestMemSnapshots_publishOnlyWhatIsWhole(t *testing.T) {
	store := newMemSnapshots()
	var snaps raft.SnapshotStore = store
	create := func(index uint64) raft.SnapshotSink {
		t.Helper()
		sink, err := snaps.Create(1, index, 2, raft.Configuration{}, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		return sink
	}
	read := func(id string) string {
		t.Helper()
		_, rc, err := snaps.Open(id)
		if err != nil {
			t.Fatalf("open %s: %v", id, err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	first := create(10)
	first.Write([]byte("half"))
	if l, _ := snaps.List(); len(l) != 0 {
		t.Fatalf("a snapshot still being written is listed: %+v", l[0])
	}
	if _, _, err := snaps.Open(first.ID()); err == nil {
		t.Fatal("a snapshot still being written opens")
	}
	first.Write([]byte(" and whole"))
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	l, _ := snaps.List()
	if len(l) != 1 || l[0].ID != first.ID() || l[0].Index != 10 || l[0].Size != int64(len("half and whole")) {
		t.Fatalf("after close the list is %+v", l)
	}
	if got := read(first.ID()); got != "half and whole" {
		t.Fatalf("opened %q", got)
	}

	second := create(20)
	if second.ID() == first.ID() {
		t.Fatalf("two snapshots share the ID %s", second.ID())
	}
	second.Write([]byte("dropped"))
	second.Cancel()
	if l, _ := snaps.List(); len(l) != 1 || l[0].ID != first.ID() {
		t.Fatalf("a cancelled snapshot replaced the latest: %+v", l)
	}
	if _, _, err := snaps.Open(second.ID()); err == nil {
		t.Fatal("a cancelled snapshot opens")
	}
	if got := read(first.ID()); got != "half and whole" {
		t.Fatalf("the latest after a cancel reads %q", got)
	}
}

// Raft writes a snapshot in one goroutine while replication goroutines
// list and open the latest; under -race this fails if they share a buffer.
func TestMemSnapshots_writerAndReadersDoNotRace(t *testing.T) {
	store := newMemSnapshots()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				l, _ := store.List()
				if len(l) == 0 {
					continue
				}
				meta, rc, err := store.Open(l[0].ID)
				if err != nil {
					continue // replaced between List and Open
				}
				b, _ := io.ReadAll(rc)
				if int64(len(b)) != meta.Size {
					t.Errorf("snapshot %s: read %d bytes, its size says %d", meta.ID, len(b), meta.Size)
				}
			}
		}()
	}
	for i := uint64(1); i <= 200; i++ {
		sink, err := store.Create(1, i, 1, raft.Configuration{}, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		for j := 0; j < 10; j++ {
			sink.Write([]byte("0123456789"))
		}
		sink.Close()
	}
	close(stop)
	wg.Wait()
}
