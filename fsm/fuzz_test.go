package fsm_test

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

// FuzzDecode: Decode never panics, refuses with ErrDecode, and what it
// accepts encodes to a stable form of the same type.
func FuzzDecode(f *testing.F) {
	for _, c := range allCommands() {
		f.Add(encode(f, c))
	}
	for _, c := range richWorld() {
		f.Add(encode(f, c))
	}
	f.Add([]byte{})
	f.Add([]byte{byte(fsm.CmdAcquireLock)})
	f.Add([]byte{byte(fsm.CmdAcquireLock), 'n', 'u', 'l', 'l'})
	f.Add([]byte("\x04{\"instance\":{\"meta\":{},\"checks\":[],\"id\":\"\xff\"}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := fsm.Decode(data)
		if err != nil {
			if !errors.Is(err, fsm.ErrDecode) || c != nil {
				t.Fatalf("Decode = %v, %v; want nil and ErrDecode", c, err)
			}
			return
		}
		if c.Type() != fsm.CommandType(data[0]) {
			t.Fatalf("decoded %s from type byte %d", c.Type(), data[0])
		}
		b, err := fsm.Encode(c)
		if err != nil {
			t.Fatalf("Encode(Decode(x)): %v", err)
		}
		c2, err := fsm.Decode(b)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(x))): %v", err)
		}
		b2, err := fsm.Encode(c2)
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("encoding not stable: %q then %q (%v)", b, b2, err)
		}
	})
}

// FuzzRestore: whatever a snapshot holds, Restore and CheckSnapshot agree,
// a refused one leaves the registry untouched, and an accepted one is a
// registry Apply could have built, which snapshots to itself and goes on
// applying entries. Each input is tried as is and with its body re-signed,
// so that mutations of the JSON get past the checksum.
func FuzzRestore(f *testing.F) {
	for _, s := range fuzzSnapshotSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tryRestore(t, data)
		body := data
		if _, b, ok := bytes.Cut(data, []byte("\n")); ok && bytes.HasPrefix(data, []byte(snapshotMagic)) {
			body = b
		}
		tryRestore(t, sign(body))
	})
}

func fuzzSnapshotSeeds(t testing.TB) [][]byte {
	rich := snapshotBytes(t, newHarness(t, richWorld()...).f)
	_, body, _ := bytes.Cut(rich, []byte("\n"))
	return [][]byte{
		snapshotBytes(t, fsm.New()),
		rich,
		rich[:len(rich)/2],
		body,
		sign([]byte(`{"nodes":[{"name":"n1","status":"alive"}],"instances":[{"id":"i","name":"web","node":"ghost"}]}`)),
		sign([]byte(`{"leases":[{"id":"l1","ttl":1000000000}],"locks":[{"name":"a","holder":{"id":"l9","lease":"l9","token":1},"last_token":1}]}`)),
	}
}

func tryRestore(t *testing.T, data []byte) {
	t.Helper()
	h := newHarness(t, regNode("mine"), grant("mine"), acquire("mine", "mine", t0))
	before := viewOf(h.f)
	checkErr := fsm.CheckSnapshot(bytes.NewReader(data))
	restored, err := h.f.RestoreNewer(nopCloser(data))
	if (err == nil) != (checkErr == nil) {
		t.Fatalf("Restore = %v but CheckSnapshot = %v", err, checkErr)
	}
	if err != nil {
		if !errors.Is(err, fsm.ErrCorruptSnapshot) {
			t.Fatalf("Restore = %v, want ErrCorruptSnapshot", err)
		}
		if !reflect.DeepEqual(viewOf(h.f), before) {
			t.Fatal("a refused snapshot changed the registry")
		}
		return
	}
	if !restored {
		// Older than the registry: kept as it was; an empty registry takes it.
		if !reflect.DeepEqual(viewOf(h.f), before) {
			t.Fatal("an older snapshot changed the registry")
		}
		h = &harness{t: t, f: fsm.New()}
		if restored, err := h.f.RestoreNewer(nopCloser(data)); err != nil || !restored {
			t.Fatalf("an empty registry refused a valid snapshot: %v, %v", restored, err)
		}
	}
	checkInvariants(t, h.f)
	again := fsm.New()
	if err := again.Restore(nopCloser(snapshotBytes(t, h.f))); err != nil {
		t.Fatalf("the snapshot of a restored registry is refused: %v", err)
	}
	if !reflect.DeepEqual(viewOf(again), viewOf(h.f)) {
		t.Fatal("a restored registry does not snapshot to itself")
	}
	// It goes on applying entries like any other.
	h.next = h.f.Index() + 1
	tokens := newTokenTracker()
	tokens.observe(t, h.f)
	for _, c := range append(richWorld(), allCommands()...) {
		h.apply(c)
		checkInvariants(t, h.f)
		tokens.observe(t, h.f)
	}
}

// FuzzApply: arbitrary entries (separated by NUL bytes, which JSON never
// holds raw) applied after the rich world never panic, keep every
// invariant and leave two replicas equal.
func FuzzApply(f *testing.F) {
	for _, seed := range fuzzApplySeeds(f) {
		f.Add(seed)
	}
	var world [][]byte
	for _, c := range richWorld() {
		world = append(world, encode(f, c))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := &harness{t: t, f: fsm.New(), next: 1}, &harness{t: t, f: fsm.New(), next: 1}
		for _, e := range world {
			a.applyBytes(e)
			b.applyBytes(e)
		}
		tokens := newTokenTracker()
		tokens.observe(t, a.f)
		for _, e := range bytes.Split(data, []byte{0}) {
			ra, rb := a.applyBytes(e), b.applyBytes(e)
			if !sameResult(ra, rb) {
				t.Fatalf("entry %q: results differ: %+v, %+v", e, ra, rb)
			}
			checkInvariants(t, a.f)
			tokens.observe(t, a.f)
		}
		if a.f.Digest() != b.f.Digest() {
			t.Fatal("replicas differ")
		}
		snap := snapshotBytes(t, a.f)
		if !bytes.Equal(snap, snapshotBytes(t, b.f)) {
			t.Fatal("replicas write different snapshots")
		}
		c := fsm.New()
		if err := c.Restore(nopCloser(snap)); err != nil {
			t.Fatalf("the registry's own snapshot is refused: %v", err)
		}
		if c.Digest() != a.f.Digest() {
			t.Fatal("restore changed the digest")
		}
	})
}

// fuzzApplySeeds are logs over the names of richWorld: every command type,
// handovers, lock delays, and a few entries that do not decode.
func fuzzApplySeeds(t testing.TB) [][]byte {
	join := func(cmds ...fsm.Command) []byte {
		var parts [][]byte
		for _, c := range cmds {
			parts = append(parts, encode(t, c))
		}
		return bytes.Join(parts, []byte{0})
	}
	later := t0 + 60*sec
	return [][]byte{
		join(allCommands()...),
		join(release("held", "l1", later), &fsm.ExpireLease{ID: "l2", Now: later}, acquire("vacant", "l2", later)),
		join(enqueue("delayed", "l2", t0+39*sec), enqueue("delayed", "l2", t0+40*sec), release("delayed", "l2", later)),
		join(&fsm.RevokeLease{ID: "s1", Now: later}, resign("e1", "c1", later), campaign("e1", "c1", "l1", later),
			&fsm.Resign{Election: "e1", Candidate: "c3", OnlyWaiting: true, Now: later}),
		join(&fsm.DeregisterNode{Name: "n2"}, regInst("n1", "web-1", "web", ttlCheck("web-1:ttl")),
			&fsm.UpdateCheck{Node: "n1", CheckID: "web-1:ttl", Status: fsm.StatusWarning}, &fsm.SetNodeStatus{Name: "n1", Status: fsm.NodeLeft},
			&fsm.DeregisterInstance{Node: "n3", ID: "db-1"}),
		join(&fsm.GrantLease{TTL: 10 * sec}, &fsm.GrantLease{ID: "l1", TTL: 10 * sec}, &fsm.AcquireLock{Name: "held", Lease: "l1", Value: "x", Queue: true, LockDelay: 5 * sec, Now: later}),
		append(join(regNode("n9")), 0, byte(fsm.CmdAcquireLock), '{', 0, 99, 0),
	}
}
