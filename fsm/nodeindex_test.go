package fsm_test

import (
	"bytes"
	"io"
	"reflect"
	"sort"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

// NodeIndex moves only when that node's instances or checks change, and a
// restored registry rebuilds it.
func TestFSM_NodeIndex_followsOneNode(t *testing.T) {
	f := fsm.New()
	idx := uint64(0)
	apply := func(c fsm.Command) {
		t.Helper()
		idx++
		b, err := fsm.Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		if res := f.ApplyBytes(idx, b); res.Err != nil {
			t.Fatalf("%T: %v", c, res.Err)
		}
	}
	apply(&fsm.RegisterNode{Name: "a", Address: "10.0.0.1"})
	apply(&fsm.RegisterNode{Name: "b", Address: "10.0.0.2"})
	apply(&fsm.RegisterInstance{Instance: fsm.Instance{ID: "web", Name: "web", Node: "a", Checks: []fsm.Check{{ID: "c", Type: "ttl", TTL: 1e9}}}})
	if got := f.NodeIndex("a"); got != idx {
		t.Fatalf("NodeIndex(a) after registering on a = %d, want %d", got, idx)
	}
	before := f.NodeIndex("a")
	apply(&fsm.RegisterInstance{Instance: fsm.Instance{ID: "db", Name: "db", Node: "b"}})
	if got := f.NodeIndex("a"); got != before {
		t.Fatalf("NodeIndex(a) moved to %d on a registration of node b", got)
	}
	apply(&fsm.UpdateCheck{Node: "a", CheckID: "c", Status: fsm.StatusPassing})
	if got := f.NodeIndex("a"); got != idx {
		t.Fatalf("NodeIndex(a) after a check update = %d, want %d", got, idx)
	}
	if n := len(f.NodeInstances("a")); n != 1 {
		t.Fatalf("NodeInstances(a) = %d instances, want 1", n)
	}
	var buf bytes.Buffer
	if err := f.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	g := fsm.New()
	if err := g.Restore(io.NopCloser(&buf)); err != nil {
		t.Fatal(err)
	}
	if g.NodeIndex("a") == 0 || len(g.NodeInstances("b")) != 1 {
		t.Fatalf("restored: NodeIndex(a) %d, NodeInstances(b) %d", g.NodeIndex("a"), len(g.NodeInstances("b")))
	}
	apply(&fsm.DeregisterInstance{Node: "a", ID: "web"})
	if got := f.NodeIndex("a"); got != idx || len(f.NodeInstances("a")) != 0 {
		t.Fatalf("after deregistering a's only instance: NodeIndex %d (want %d), %d instances", got, idx, len(f.NodeInstances("a")))
	}
}

// A service's index and watch move only for that service: its instances,
// their checks, their node's status; a write to another service or a node
// without it leaves them alone. A deregistered service keeps its index; a
// restore moves every index to the restore's.
func TestFSM_ServiceIndex_followsOneService(t *testing.T) {
	f := fsm.New()
	idx := uint64(0)
	apply := func(c fsm.Command) {
		t.Helper()
		idx++
		b, err := fsm.Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		if res := f.ApplyBytes(idx, b); res.Err != nil {
			t.Fatalf("%T: %v", c, res.Err)
		}
	}
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	apply(&fsm.RegisterNode{Name: "a", Address: "10.0.0.1"})
	apply(&fsm.RegisterNode{Name: "b", Address: "10.0.0.2"})
	if got := f.ServiceIndex("web"); got != 0 {
		t.Fatalf("index of a service never seen: %d, want 0", got)
	}
	web := f.WatchService("Web")
	apply(&fsm.RegisterInstance{Instance: fsm.Instance{ID: "w1", Name: "web", Node: "a", Checks: []fsm.Check{{ID: "c", Type: "ttl", TTL: 1e9}}}})
	if got := f.ServiceIndex("WEB"); got != idx || !closed(web) {
		t.Fatalf("after registering web: index %d (want %d), watch closed %v", got, idx, closed(web))
	}
	webAt := idx
	web = f.WatchService("web")
	apply(&fsm.RegisterInstance{Instance: fsm.Instance{ID: "d1", Name: "db", Node: "b"}})
	apply(&fsm.SetNodeStatus{Name: "b", Status: fsm.NodeFailed})
	apply(&fsm.GrantLease{TTL: 1e9})
	lease := fsm.LeaseIDFromIndex(idx)
	if got := f.ServiceIndex("web"); got != webAt || closed(web) {
		t.Fatalf("writes elsewhere moved web: index %d (want %d), watch closed %v", got, webAt, closed(web))
	}
	for _, c := range []fsm.Command{
		&fsm.UpdateCheck{Node: "a", CheckID: "c", Status: fsm.StatusPassing},
		&fsm.SetNodeStatus{Name: "a", Status: fsm.NodeFailed},
		&fsm.RegisterNode{Name: "a", Address: "10.0.0.1"}, // alive again
		&fsm.DeregisterInstance{Node: "a", ID: "w1"},
	} {
		web = f.WatchService("web")
		apply(c)
		if got := f.ServiceIndex("web"); got != idx || !closed(web) {
			t.Fatalf("%T: web index %d (want %d), watch closed %v", c, got, idx, closed(web))
		}
	}
	if _, ok := f.Services()["web"]; ok {
		t.Fatal("web listed after its last instance went")
	}
	// Locks wake their own readers only.
	x := f.WatchLock("x")
	apply(&fsm.AcquireLock{Name: "y", Lease: lease})
	if closed(x) {
		t.Fatal("lock y woke a reader of x")
	}
	apply(&fsm.AcquireLock{Name: "x", Lease: lease})
	if !closed(x) || f.LockIndex("x") != idx {
		t.Fatalf("lock x: watch closed %v, index %d (want %d)", closed(x), f.LockIndex("x"), idx)
	}
	x, el := f.WatchLock("x"), f.WatchElection("e")
	apply(&fsm.RevokeLease{ID: lease})
	if !closed(x) || closed(el) {
		t.Fatalf("revoking x's lease: lock watch closed %v, election watch closed %v", closed(x), closed(el))
	}

	var buf bytes.Buffer
	if err := f.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	restored := fsm.New()
	data, err := fsm.Reindex(buf.Bytes(), 100)
	if err != nil {
		t.Fatal(err)
	}
	web = restored.WatchService("web")
	if err := restored.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if !closed(web) || restored.ServiceIndex("db") != 100 || restored.ServiceIndex("never") != 100 || restored.LockIndex("x") != 100 {
		t.Fatalf("after a restore at 100: watch closed %v, db %d, never %d, lock %d", closed(web),
			restored.ServiceIndex("db"), restored.ServiceIndex("never"), restored.LockIndex("x"))
	}
}

// A tracked node's journal names the instances that changed after an index;
// it cannot tell across a restore or further back than it keeps.
func TestFSM_NodeChanges(t *testing.T) {
	f := fsm.New()
	idx := uint64(0)
	apply := func(c fsm.Command) {
		t.Helper()
		idx++
		b, _ := fsm.Encode(c)
		if res := f.ApplyBytes(idx, b); res.Err != nil {
			t.Fatalf("%T: %v", c, res.Err)
		}
	}
	apply(&fsm.RegisterNode{Name: "a"})
	apply(&fsm.RegisterNode{Name: "b"})
	if _, _, ok := f.NodeChanges("a", 0); ok {
		t.Fatal("an untracked node's changes are told")
	}
	f.TrackNode("a")
	start := idx
	apply(&fsm.RegisterInstance{Instance: fsm.Instance{ID: "w1", Name: "web", Node: "a", Checks: []fsm.Check{{ID: "c", Type: "ttl", TTL: 1e9}}}})
	apply(&fsm.RegisterInstance{Instance: fsm.Instance{ID: "d1", Name: "db", Node: "b"}})
	mid := idx
	apply(&fsm.UpdateCheck{Node: "a", CheckID: "c", Status: fsm.StatusPassing})
	apply(&fsm.RegisterInstance{Instance: fsm.Instance{ID: "w2", Name: "web", Node: "a"}})
	apply(&fsm.DeregisterInstance{Node: "a", ID: "w2"})
	ids, upTo, ok := f.NodeChanges("a", start)
	sort.Strings(ids)
	if !ok || upTo != idx || !reflect.DeepEqual(ids, []string{"w1", "w2"}) {
		t.Fatalf("changes of a since %d: %v up to %d ok %v", start, ids, upTo, ok)
	}
	if ids, _, _ := f.NodeChanges("a", mid); !reflect.DeepEqual(sortedCopy(ids), []string{"w1", "w2"}) {
		t.Fatalf("changes of a since %d: %v", mid, ids)
	}
	if ids, _, ok := f.NodeChanges("a", idx); !ok || len(ids) != 0 {
		t.Fatalf("changes since the last entry: %v %v", ids, ok)
	}
	if _, _, ok := f.NodeChanges("a", start-1); ok {
		t.Fatal("changes from before tracking began are told")
	}
	// A restore: nothing before it can be told.
	var buf bytes.Buffer
	f.WriteSnapshot(&buf)
	data, _ := fsm.Reindex(buf.Bytes(), idx+10)
	if err := f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := f.NodeChanges("a", idx); ok {
		t.Fatal("changes across a restore are told")
	}
	idx += 10
	if ids, _, ok := f.NodeChanges("a", idx); !ok || len(ids) != 0 {
		t.Fatalf("journal after the restore: %v %v", ids, ok)
	}
	// A reader behind by more than a second of heavy registration (4,500
	// changes) is still told; one behind by more than the journal keeps
	// compares in full.
	from := idx
	for i := 0; i < 4500; i++ {
		apply(&fsm.UpdateCheck{Node: "a", CheckID: "c", Status: []string{fsm.StatusPassing, fsm.StatusCritical}[i%2]})
	}
	if ids, upTo, ok := f.NodeChanges("a", from); !ok || !reflect.DeepEqual(ids, []string{"w1"}) || upTo != idx {
		t.Fatalf("4,500 changes since %d: %v up to %d ok %v", from, ids, upTo, ok)
	}
	// Unread, the journal keeps JournalLimit changes; the next one drops
	// the older half: complete after the last one dropped, not before.
	from = idx
	if ids, _, ok := f.NodeChanges("a", from); !ok || len(ids) != 0 { // read: the journal is empty
		t.Fatalf("changes since the last read: %v %v", ids, ok)
	}
	for i := 0; i < fsm.JournalLimit+1; i++ {
		apply(&fsm.UpdateCheck{Node: "a", CheckID: "c", Status: []string{fsm.StatusPassing, fsm.StatusCritical}[i%2]})
	}
	lastDropped := from + fsm.JournalLimit/2
	if _, _, ok := f.NodeChanges("a", lastDropped-1); ok {
		t.Fatal("a journal cut short tells changes it dropped")
	}
	if _, _, ok := f.NodeChanges("a", lastDropped); !ok {
		t.Fatalf("the journal cannot tell the changes after index %d, the last it dropped", lastDropped)
	}
	if ids, _, ok := f.NodeChanges("a", idx-10); !ok || !reflect.DeepEqual(ids, []string{"w1"}) {
		t.Fatalf("recent changes: %v %v", ids, ok)
	}
	// What a reader has seen is not told again, and it cannot ask for it.
	if _, _, ok := f.NodeChanges("a", idx-20); ok {
		t.Fatal("changes the reader had seen are told again")
	}
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}
