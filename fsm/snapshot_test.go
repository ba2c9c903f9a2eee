package fsm_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

// snapshotMagic starts every snapshot, followed by the SHA-256 of the body.
const snapshotMagic = "sidecar-snapshot v1 "

// snapBody mirrors the JSON body of a snapshot, to build altered ones.
type snapBody struct {
	Index     uint64          `json:"index"`
	Tables    []uint64        `json:"tables"`
	Nodes     []*fsm.Node     `json:"nodes"`
	Instances []*fsm.Instance `json:"instances"`
	Leases    []*fsm.Lease    `json:"leases"`
	Locks     []*fsm.Mutex    `json:"locks"`
	Elections []*fsm.Mutex    `json:"elections"`
}

func splitSnapshot(t *testing.T, snap []byte) (header, body []byte) {
	t.Helper()
	header, body, ok := bytes.Cut(snap, []byte("\n"))
	if !ok || !bytes.HasPrefix(header, []byte(snapshotMagic)) {
		t.Fatalf("snapshot does not start with %q: %.60q", snapshotMagic, snap)
	}
	return header, body
}

// sign frames a body with a valid header.
func sign(body []byte) []byte {
	sum := sha256.Sum256(body)
	return append([]byte(snapshotMagic+hex.EncodeToString(sum[:])+"\n"), body...)
}

func decodeBody(t *testing.T, snap []byte) *snapBody {
	t.Helper()
	_, body := splitSnapshot(t, snap)
	var d snapBody
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatal(err)
	}
	return &d
}

// fakeSink is a raft.SnapshotSink in memory.
type fakeSink struct {
	bytes.Buffer
	writeErr          error
	closed, cancelled bool
}

func (s *fakeSink) ID() string { return "fake" }

func (s *fakeSink) Write(p []byte) (int, error) {
	if s.writeErr != nil {
		return 0, s.writeErr
	}
	return s.Buffer.Write(p)
}

func (s *fakeSink) Close() error  { s.closed = true; return nil }
func (s *fakeSink) Cancel() error { s.cancelled = true; return nil }

func requireSameView(t *testing.T, got, want *fsm.FSM) {
	t.Helper()
	if g, w := viewOf(got), viewOf(want); !reflect.DeepEqual(g, w) {
		t.Fatalf("restored registry differs:\ngot  %+v\nwant %+v", g, w)
	}
}

func TestFSM_WriteSnapshot_restoreGivesEqualState(t *testing.T) {
	for _, tc := range []struct {
		name string
		log  []fsm.Command
	}{
		{"empty", nil},
		{"rich", richWorld()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := newHarness(t, tc.log...)
			snap := snapshotBytes(t, src.f)
			if err := fsm.CheckSnapshot(bytes.NewReader(snap)); err != nil {
				t.Fatalf("CheckSnapshot: %v", err)
			}
			// Restore into a registry that holds something else, and is
			// older: it is replaced, not merged.
			dst := newHarness(t)
			if tc.log != nil {
				dst = newHarness(t, regNode("other"), grant("other"), acquire("other", "other", t0))
			}
			if err := dst.f.Restore(nopCloser(snap)); err != nil {
				t.Fatalf("Restore: %v", err)
			}
			requireSameView(t, dst.f, src.f)
			if again := snapshotBytes(t, dst.f); !bytes.Equal(again, snap) {
				t.Fatal("snapshot of the restored registry differs from the one restored")
			}
			if tc.name == "rich" {
				// Spot checks that matter to users across a restore.
				if n, _ := dst.f.Node("n3"); n.Status != fsm.NodeFailed {
					t.Errorf("n3 status %q", n.Status)
				}
				if m, _ := dst.f.Lock("delayed"); m.DelayUntil != t0+40*sec || !reflect.DeepEqual(waiterIDs(m), []string{"l2"}) {
					t.Errorf("delayed lock %+v", m)
				}
				if m, _ := dst.f.Lock("vacant"); m.Holder != nil || m.LastToken == 0 {
					t.Errorf("vacant lock %+v", m)
				}
			}
		})
	}
}

// TestFSM_restore_thenApply checks that a restored registry goes on exactly
// as the one it was taken from, fencing tokens included.
func TestFSM_restore_thenApply(t *testing.T) {
	src := newHarness(t, richWorld()...)
	dst := &harness{t: t, f: fsm.New(), next: src.next}
	if err := dst.f.Restore(nopCloser(snapshotBytes(t, src.f))); err != nil {
		t.Fatal(err)
	}
	for _, c := range []fsm.Command{
		release("held", "l1", t0+sec),
		acquire("vacant", "l2", t0+sec),
		enqueue("delayed", "l2", t0+40*sec),
		&fsm.RevokeLease{ID: "s1", Now: t0 + sec},
		resign("e1", "c1", t0+sec),
		&fsm.UpdateCheck{Node: "n2", CheckID: "web-2:exec", Status: fsm.StatusPassing},
		regInst("n1", "web-1", "web", ttlCheck("web-1:ttl")),
		&fsm.GrantLease{TTL: 10 * sec},
	} {
		rs, rd := src.apply(c), dst.apply(c)
		if !reflect.DeepEqual(rs, rd) {
			t.Fatalf("%s: source %+v, restored %+v", c.Type(), rs, rd)
		}
	}
	requireSameView(t, dst.f, src.f)
}

func TestFSM_Snapshot_persist(t *testing.T) {
	src := newHarness(t, richWorld()...)
	want := viewOf(src.f)
	snap, err := src.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	// Entries applied after Snapshot returned are not in it.
	src.ok(regNode("late"))
	src.ok(release("held", "l1", t0))

	sink := &fakeSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed %v cancelled %v, want closed only", sink.closed, sink.cancelled)
	}
	dst := fsm.New()
	if err := dst.Restore(nopCloser(sink.Bytes())); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if got := viewOf(dst); !reflect.DeepEqual(got, want) {
		t.Fatalf("restored %+v\nwant %+v", got, want)
	}
}

func TestFSM_Snapshot_persistFails(t *testing.T) {
	src := newHarness(t, richWorld()...)
	snap, err := src.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk full")
	sink := &fakeSink{writeErr: boom}
	if err := snap.Persist(sink); !errors.Is(err, boom) {
		t.Fatalf("Persist = %v, want %v", err, boom)
	}
	if sink.closed || !sink.cancelled {
		t.Fatalf("sink closed %v cancelled %v, want cancelled only", sink.closed, sink.cancelled)
	}
}

type closeRecorder struct {
	*bytes.Reader
	closed bool
}

func (c *closeRecorder) Close() error { c.closed = true; return nil }

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }
func (failingReader) Close() error             { return nil }

func TestFSM_Restore_closesReader(t *testing.T) {
	for _, data := range [][]byte{snapshotBytes(t, fsm.New()), []byte("junk")} {
		rc := &closeRecorder{Reader: bytes.NewReader(data)}
		_ = fsm.New().Restore(rc)
		if !rc.closed {
			t.Errorf("Restore(%.20q) did not close its reader", data)
		}
	}
}

func TestFSM_Restore_readError(t *testing.T) {
	h := newHarness(t, richWorld()...)
	before := viewOf(h.f)
	if err := h.f.Restore(failingReader{}); err == nil {
		t.Fatal("Restore of a failing reader succeeded")
	}
	if after := viewOf(h.f); !reflect.DeepEqual(before, after) {
		t.Fatal("a failed restore changed the registry")
	}
}

func TestFSM_Restore_corrupt(t *testing.T) {
	good := snapshotBytes(t, newHarness(t, richWorld()...).f)
	header, body := splitSnapshot(t, good)
	flip := func(b []byte, i int) []byte {
		c := bytes.Clone(b)
		c[i] ^= 0x20
		return c
	}
	// content re-signs the rich snapshot after mod: the checksum holds, the
	// content does not.
	content := func(mod func(d *snapBody)) []byte {
		d := decodeBody(t, good)
		mod(d)
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		return sign(b)
	}
	lock := func(d *snapBody, name string) *fsm.Mutex {
		for _, m := range d.Locks {
			if m.Name == name {
				return m
			}
		}
		t.Fatalf("no lock %q in snapshot", name)
		return nil
	}
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"header only", header},
		{"truncated header", good[:10]},
		{"truncated body", good[:len(header)+1+len(body)/2]},
		{"last byte missing", good[:len(good)-1]},
		{"trailing bytes", append(bytes.Clone(good), ' ')},
		{"flipped body byte", flip(good, len(header)+1+len(body)/3)},
		{"flipped checksum byte", flip(good, len(snapshotMagic)+3)},
		{"wrong magic", append([]byte(strings.Replace(string(header), "v1", "v2", 1)+"\n"), body...)},
		{"no header", body},
		{"signed non-JSON", sign([]byte("not json"))},
		{"signed wrong JSON types", sign([]byte(`{"nodes":{"n1":1}}`))},
		{"too many tables", content(func(d *snapBody) { d.Tables = append(d.Tables, 1) })},
		{"null node", content(func(d *snapBody) { d.Nodes = append(d.Nodes, nil) })},
		{"bad node name", content(func(d *snapBody) { d.Nodes[0].Name = "bad name" })},
		{"node twice", content(func(d *snapBody) { d.Nodes = append(d.Nodes, d.Nodes[0]) })},
		{"unknown node status", content(func(d *snapBody) { d.Nodes[0].Status = "zombie" })},
		{"null lease", content(func(d *snapBody) { d.Leases = append(d.Leases, nil) })},
		{"lease twice", content(func(d *snapBody) { d.Leases = append(d.Leases, d.Leases[0]) })},
		{"lease ttl zero", content(func(d *snapBody) { d.Leases[0].TTL = 0 })},
		{"bad lease id", content(func(d *snapBody) { d.Leases[0].ID = "" })},
		{"null instance", content(func(d *snapBody) { d.Instances = append(d.Instances, nil) })},
		{"instance without its node", content(func(d *snapBody) { d.Instances[0].Node = "ghost" })},
		{"instance twice", content(func(d *snapBody) { d.Instances = append(d.Instances, d.Instances[0]) })},
		{"invalid instance", content(func(d *snapBody) { d.Instances[0].Port = -1 })},
		{"instance on unknown lease", content(func(d *snapBody) { d.Instances[0].Lease = "ghost" })},
		{"check without status", content(func(d *snapBody) { d.Instances[0].Checks[0].Status = "" })},
		{"check id of two instances", content(func(d *snapBody) {
			in := *d.Instances[0]
			in.ID = "copy"
			d.Instances = append(d.Instances, &in)
		})},
		{"null lock", content(func(d *snapBody) { d.Locks = append(d.Locks, nil) })},
		{"bad lock name", content(func(d *snapBody) { lock(d, "held").Name = "bad name" })},
		{"lock twice", content(func(d *snapBody) { d.Locks = append(d.Locks, lock(d, "held")) })},
		{"lock holder on unknown lease", content(func(d *snapBody) {
			h := lock(d, "held").Holder
			h.ID, h.Lease = "ghost", "ghost"
		})},
		{"lock holder not its lease", content(func(d *snapBody) { lock(d, "held").Holder.ID = "someone" })},
		{"lock waiter on unknown lease", content(func(d *snapBody) {
			w := &lock(d, "held").Waiters[0]
			w.ID, w.Lease = "ghost", "ghost"
		})},
		{"holder also waiting", content(func(d *snapBody) {
			m := lock(d, "held")
			m.Waiters = append(m.Waiters, *m.Holder)
		})},
		{"waiting twice", content(func(d *snapBody) {
			m := lock(d, "held")
			m.Waiters = append(m.Waiters, m.Waiters[0])
		})},
		{"waiter with a token", content(func(d *snapBody) { lock(d, "held").Waiters[0].Token = 3 })},
		{"holder token zero", content(func(d *snapBody) { lock(d, "held").Holder.Token = 0 })},
		{"holder token above last token", content(func(d *snapBody) {
			m := lock(d, "held")
			m.Holder.Token = m.LastToken + 1
		})},
		{"election leader on unknown lease", content(func(d *snapBody) { d.Elections[0].Holder.Lease = "ghost" })},
		{"election twice", content(func(d *snapBody) { d.Elections = append(d.Elections, d.Elections[0]) })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := fsm.CheckSnapshot(bytes.NewReader(tc.data)); !errors.Is(err, fsm.ErrCorruptSnapshot) {
				t.Errorf("CheckSnapshot = %v, want ErrCorruptSnapshot", err)
			}
			h := newHarness(t, regNode("mine"), grant("mine"), acquire("mine", "mine", t0))
			before := viewOf(h.f)
			w := h.f.Watch()
			if err := h.f.Restore(nopCloser(tc.data)); !errors.Is(err, fsm.ErrCorruptSnapshot) {
				t.Errorf("Restore = %v, want ErrCorruptSnapshot", err)
			}
			if after := viewOf(h.f); !reflect.DeepEqual(before, after) {
				t.Errorf("a refused snapshot changed the registry")
			}
			if closed(w) {
				t.Error("a refused snapshot fired Watch")
			}
		})
	}
}

// TestCheckSnapshot_good checks that what WriteSnapshot and Persist write
// passes CheckSnapshot, whatever the registry holds.
func TestCheckSnapshot_good(t *testing.T) {
	log := richWorld()
	h := newHarness(t)
	for i, c := range log {
		h.apply(c)
		if err := fsm.CheckSnapshot(bytes.NewReader(snapshotBytes(t, h.f))); err != nil {
			t.Fatalf("after %d entries: %v", i+1, err)
		}
	}
	if err := fsm.CheckSnapshot(strings.NewReader(fmt.Sprintf("%s\n{}", snapshotMagic))); !errors.Is(err, fsm.ErrCorruptSnapshot) {
		t.Fatalf("header without checksum: %v", err)
	}
}

// A follower can be sent a snapshot older than what it applied already
// (hashicorp/raft installs it, then replays the entries after it): the
// registry keeps its newer state and skips the replayed entries, so it
// never goes back in time and ends where every other replica does.
func TestFSM_Restore_olderSnapshotKeepsNewerState(t *testing.T) {
	leader := newHarness(t, richWorld()[:4]...)
	old := snapshotBytes(t, leader.f)
	oldIndex := leader.f.Index()
	var rest [][]byte
	for _, c := range append(richWorld()[4:], &fsm.RevokeLease{ID: "l1", Now: t0}) {
		rest = append(rest, encode(t, c))
	}
	for _, e := range rest {
		leader.applyBytes(e)
	}
	follower := newHarness(t, richWorld()[:4]...)
	for _, e := range rest {
		follower.applyBytes(e)
	}
	before := viewOf(follower.f)
	restored, err := follower.f.RestoreNewer(nopCloser(old))
	if err != nil || restored {
		t.Fatalf("RestoreNewer(older snapshot) = %v, %v; want kept", restored, err)
	}
	if !reflect.DeepEqual(viewOf(follower.f), before) {
		t.Fatal("an older snapshot changed the registry")
	}
	// Raft replays the entries after the snapshot: already applied.
	for i, e := range rest {
		if r := follower.f.ApplyBytes(oldIndex+1+uint64(i), e); r.Err != nil || r.Held {
			t.Fatalf("replayed entry %d: %+v, want a no-op", i, r)
		}
	}
	requireSameView(t, follower.f, leader.f)
	// A newer snapshot still replaces it.
	if restored, err := fsm.New().RestoreNewer(nopCloser(snapshotBytes(t, leader.f))); err != nil || !restored {
		t.Fatalf("RestoreNewer into an empty registry = %v, %v", restored, err)
	}
}

// A saved snapshot restored through Raft is reindexed above every replica:
// replicas take it whatever they applied, and tokens keep growing past the
// ones it carries.
func TestReindex(t *testing.T) {
	src := newHarness(t, richWorld()...)
	saved := snapshotBytes(t, src.f)
	busy := newHarness(t, richWorld()...)
	busy.apply(regNode("later"))
	at := busy.f.Index() + 100
	data, err := fsm.Reindex(saved, at)
	if err != nil {
		t.Fatal(err)
	}
	if restored, err := busy.f.RestoreNewer(nopCloser(data)); err != nil || !restored {
		t.Fatalf("reindexed snapshot refused: %v, %v", restored, err)
	}
	if busy.f.Index() != at || busy.f.Digest() != src.f.Digest() {
		t.Fatalf("index %d digest %s, want %d and the saved registry's", busy.f.Index(), busy.f.Digest(), at)
	}
	if _, err := fsm.Reindex(saved[:len(saved)-2], at); !errors.Is(err, fsm.ErrCorruptSnapshot) {
		t.Fatalf("Reindex of a corrupt snapshot: %v", err)
	}
}

// Two tokens with one secret in a snapshot are refused: a secret must name
// one token. Tokens without a secret (the anonymous token) may be many.
func TestFSM_Restore_tokensSharingASecret(t *testing.T) {
	good := snapshotBytes(t, newHarness(t, bootstrapCmd(), setToken(tokA, "h-a"), setToken(tokB, "h-b")).f)
	_, body := splitSnapshot(t, good)
	shared := sign(bytes.Replace(body, []byte(`"h-b"`), []byte(`"h-a"`), 1))
	if bytes.Equal(shared, good) {
		t.Fatal("no secret replaced")
	}
	if err := fsm.CheckSnapshot(bytes.NewReader(shared)); !errors.Is(err, fsm.ErrCorruptSnapshot) {
		t.Fatalf("CheckSnapshot of two tokens sharing a secret = %v, want ErrCorruptSnapshot", err)
	}
	if err := fsm.CheckSnapshot(bytes.NewReader(good)); err != nil {
		t.Fatalf("CheckSnapshot of the good one: %v", err)
	}
}
