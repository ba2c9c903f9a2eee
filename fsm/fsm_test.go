package fsm_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/fsm"
)

// richWorld is a log that leaves something in every part of the registry.
func richWorld() []fsm.Command {
	web1 := regInst("n1", "web-1", "web", ttlCheck("web-1:ttl"), fsm.Check{ID: "web-1:http", Type: "http", HTTP: "http://10.0.0.1/h", Interval: sec, Timeout: sec, SuccessBeforePassing: 2, FailuresBeforeCritical: 3, DeregisterCriticalAfter: 60 * sec})
	web1.Instance.Tags = []string{"v1", "primary"}
	web1.Instance.Meta = map[string]string{"version": "1.2"}
	web2 := regInst("n2", "web-2", "web", fsm.Check{ID: "web-2:exec", Type: "exec", Exec: []string{"/bin/check", "-q"}})
	web2.Instance.Lease = "s1"
	return []fsm.Command{
		&fsm.RegisterNode{Name: "n1", Address: "10.0.0.1", Meta: map[string]string{"zone": "a"}},
		regNode("n2"), regNode("n3"),
		&fsm.SetNodeStatus{Name: "n3", Status: fsm.NodeFailed},
		&fsm.GrantLease{ID: "s1", TTL: 10 * sec, Node: "n2"},
		grant("l1"), grant("l2"), grant("l3"),
		&fsm.GrantLease{TTL: 30 * sec}, // derived ID
		web1, web2,
		regInst("n3", "db-1", "db"),
		&fsm.UpdateCheck{Node: "n1", CheckID: "web-1:ttl", Status: fsm.StatusPassing, Output: "ok"},
		acquire("held", "l1", t0), enqueue("held", "l2", t0), enqueue("held", "l3", t0),
		acquire("vacant", "l1", t0), release("vacant", "l1", t0),
		&fsm.AcquireLock{Name: "delayed", Lease: "l3", LockDelay: 30 * sec, Now: t0}, enqueue("delayed", "l2", t0),
		&fsm.ExpireLease{ID: "l3", Now: t0 + 10*sec},
		campaign("e1", "c1", "l1", t0), campaign("e1", "c2", "s1", t0), campaign("e1", "c3", "l2", t0),
		campaign("e2", "c1", "l2", t0), resign("e2", "c1", t0),
	}
}

func TestFSM_Watch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		entry func(t *testing.T) []byte
		fires bool
	}{
		{"change", func(t *testing.T) []byte { return encode(t, regNode("n9")) }, true},
		{"failed command", func(t *testing.T) []byte { return encode(t, &fsm.DeregisterNode{Name: "n9"}) }, false},
		{"invalid command", func(t *testing.T) []byte { return encode(t, &fsm.RegisterNode{Name: "bad name"}) }, false},
		{"entry that does not decode", func(*testing.T) []byte { return []byte{byte(fsm.CmdRegisterNode), '{'} }, false},
		{"same node status", func(t *testing.T) []byte { return encode(t, &fsm.SetNodeStatus{Name: "n1", Status: fsm.NodeAlive}) }, false},
		{"same check status", func(t *testing.T) []byte {
			return encode(t, &fsm.UpdateCheck{Node: "n1", CheckID: "web-1:ttl", Status: fsm.StatusPassing, Output: "ok"})
		}, false},
		{"check status change", func(t *testing.T) []byte {
			return encode(t, &fsm.UpdateCheck{Node: "n1", CheckID: "web-1:ttl", Status: fsm.StatusCritical})
		}, true},
		{"lock holder asking again", func(t *testing.T) []byte { return encode(t, acquire("held", "l1", t0+sec)) }, false},
		{"lock waiter asking again", func(t *testing.T) []byte { return encode(t, enqueue("held", "l2", t0+sec)) }, false},
		{"refused lock", func(t *testing.T) []byte { return encode(t, acquire("held", "s1", t0+sec)) }, false},
		{"lock handover", func(t *testing.T) []byte { return encode(t, release("held", "l1", t0+sec)) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, richWorld()...)
			w1, w2 := h.f.Watch(), h.f.Watch()
			r := h.applyBytes(tc.entry(t))
			if closed(w1) != tc.fires || closed(w2) != tc.fires {
				t.Fatalf("watch closed %v/%v, want %v (result %+v)", closed(w1), closed(w2), tc.fires, r)
			}
			if tc.fires && closed(h.f.Watch()) {
				t.Fatal("a watch taken after the change is already closed")
			}
		})
	}
}

func TestFSM_Watch_restore(t *testing.T) {
	src := newHarness(t, richWorld()...)
	f := fsm.New()
	w := f.Watch()
	if err := f.Restore(nopCloser(snapshotBytes(t, src.f))); err != nil {
		t.Fatal(err)
	}
	if !closed(w) {
		t.Fatal("Restore did not fire Watch")
	}
}

func TestFSM_Apply_raftLog(t *testing.T) {
	f := fsm.New()
	r, ok := f.Apply(&raft.Log{Index: 3, Type: raft.LogCommand, Data: encode(t, regNode("n1"))}).(*fsm.Result)
	if !ok || r.Err != nil || r.Index != 3 {
		t.Fatalf("Apply = %+v", r)
	}
	if _, ok := f.Node("n1"); !ok || f.Index() != 3 || f.TableIndex(fsm.TableNodes) != 3 {
		t.Fatalf("node not applied: index %d", f.Index())
	}

	digest, w := f.Digest(), f.Watch()
	for _, typ := range []raft.LogType{raft.LogNoop, raft.LogBarrier, raft.LogConfiguration} {
		r, ok := f.Apply(&raft.Log{Index: 4, Type: typ, Data: encode(t, regNode("n2"))}).(*fsm.Result)
		if !ok || r.Err != nil || r.Index != 4 {
			t.Fatalf("Apply(%v) = %+v", typ, r)
		}
	}
	if f.Digest() != digest || closed(w) {
		t.Fatal("a log entry that is not a command changed the registry")
	}
}

// TestFSM_ApplyBytes_undecodable: an entry that does not decode halts the
// registry (every replica of the same version halts at the same entry);
// skipping it would let replicas differ.
func TestFSM_ApplyBytes_undecodable(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"unknown type", []byte{0, '{', '}'}},
		{"type past the last", []byte{byte(fsm.CmdTransfer) + 1, '{', '}'}},
		{"bad json", []byte{byte(fsm.CmdGrantLease), '{', '"'}},
		{"wrong field type", append([]byte{byte(fsm.CmdGrantLease)}, `{"ttl":"10s"}`...)},
		{"type byte only", []byte{byte(fsm.CmdAcquireLock)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, richWorld()...)
			last := h.f.Index()
			digest := h.f.Digest()
			r := requireUnchangedBytes(t, h, tc.data, fsm.ErrDecode)
			if !errors.Is(r.Err, fsm.ErrHalted) || !strings.Contains(r.Err.Error(), fmt.Sprintf("entry %d", r.Index)) {
				t.Fatalf("err = %v, want ErrHalted naming entry %d", r.Err, r.Index)
			}
			if h.f.Index() != last {
				t.Errorf("Index() = %d, want %d: an entry that does not decode is not applied", h.f.Index(), last)
			}
			select {
			case <-h.f.Halted():
			default:
				t.Fatal("Halted not closed")
			}
			if !errors.Is(h.f.Err(), fsm.ErrHalted) {
				t.Fatalf("Err() = %v", h.f.Err())
			}
			// Halted for good: a valid entry after it is not applied either,
			// no snapshot is taken and none restored.
			if r := h.apply(regNode("after")); !errors.Is(r.Err, fsm.ErrHalted) || h.f.Digest() != digest || h.f.Index() != last {
				t.Fatalf("entry after the halt: %+v, index %d", r, h.f.Index())
			}
			if _, err := h.f.Snapshot(); !errors.Is(err, fsm.ErrHalted) {
				t.Fatalf("Snapshot of a halted registry: %v", err)
			}
			snap := snapshotBytes(t, fsm.New())
			if err := h.f.Restore(io.NopCloser(bytes.NewReader(snap))); !errors.Is(err, fsm.ErrHalted) {
				t.Fatalf("Restore into a halted registry: %v", err)
			}
		})
	}
}

func TestFSM_TableIndex_unknownTable(t *testing.T) {
	h := newHarness(t, richWorld()...)
	for _, tb := range []fsm.Table{-1, fsm.NumTables, fsm.NumTables + 1, 100} {
		if got := h.f.TableIndex(tb); got != 0 {
			t.Errorf("TableIndex(%d) = %d, want 0", tb, got)
		}
	}
}

func TestFSM_Index(t *testing.T) {
	f := fsm.New()
	if f.Index() != 0 {
		t.Fatalf("new FSM index %d", f.Index())
	}
	f.ApplyBytes(10, encode(t, regNode("n1")))
	f.ApplyBytes(5, encode(t, regNode("n2"))) // never goes back
	if f.Index() != 10 {
		t.Fatalf("Index() = %d, want 10", f.Index())
	}
}

// TestFSM_queries_returnCopies checks that what a reader gets cannot change
// the registry.
func TestFSM_queries_returnCopies(t *testing.T) {
	h := newHarness(t, richWorld()...)
	before := viewOf(h.f)

	n, _ := h.f.Node("n1")
	n.Meta["zone"] = "x"
	h.f.Nodes()[0].Address = "x"
	in, _ := h.f.Instance("n1", "web-1")
	in.Tags[0], in.Meta["version"], in.Checks[0].Status = "x", "x", "x"
	in.Checks[1].Exec = append(in.Checks[1].Exec, "x")
	h.f.ServiceInstances("web")[0].Instance.Port = 1
	h.f.NodeInstances("n2")[0].Checks[0].Exec[0] = "x"
	o, _ := h.f.CheckOwner("n1", "web-1:ttl")
	o.Checks[0].Output = "x"
	l, _ := h.f.Lease("l1")
	l.TTL = 1
	h.f.Leases()[0].TTL = 1
	m, _ := h.f.Lock("held")
	m.Holder.Token, m.Waiters[0].ID = 999, "x"
	h.f.Locks()[0].LastToken = 999
	e, _ := h.f.Election("e1")
	e.Holder.Value = "x"
	h.f.Elections()[0].Waiters[0].Value = "x"
	h.f.Services()["web"][0] = "x"
	r := h.ok(enqueue("held", "s1", t0))
	r.Holder.Token = 999

	after := viewOf(h.f)
	before.Index, before.Tables, before.Digest = 0, nil, ""
	after.Index, after.Tables, after.Digest = 0, nil, ""
	// The enqueue above changed lock "held": compare it apart.
	before.Locks, after.Locks = nil, nil
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("changing a query's answer changed the registry:\n%+v\n%+v", before, after)
	}
	if m := h.lock("held"); m.Holder.Token != 14 || m.Waiters[0].ID != "l2" {
		t.Fatalf("lock changed through a copy: %+v %v", m.Holder, waiterIDs(m))
	}
}

func TestFSM_VisitService(t *testing.T) {
	h := newHarness(t, richWorld()...)
	got := map[string]string{}
	if !h.f.VisitService("WEB", func(in *fsm.Instance, status string) { got[in.ID] = status }) {
		t.Fatal("VisitService(WEB) = false")
	}
	want := map[string]string{"web-1": fsm.StatusCritical, "web-2": fsm.StatusCritical}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("visited %v, want %v", got, want)
	}
	h.ok(&fsm.UpdateCheck{Node: "n1", CheckID: "web-1:http", Status: fsm.StatusPassing})
	h.f.VisitService("web", func(in *fsm.Instance, status string) { got[in.ID] = status })
	if got["web-1"] != fsm.StatusPassing {
		t.Fatalf("web-1 = %s after its checks passed", got["web-1"])
	}
	// Instances of a failed node are critical whatever their checks say.
	h.f.VisitService("db", func(in *fsm.Instance, status string) { got[in.ID] = status })
	if got["db-1"] != fsm.StatusCritical {
		t.Fatalf("db-1 on a failed node = %s", got["db-1"])
	}
	if h.f.VisitService("nope", func(*fsm.Instance, string) { t.Fatal("called for an unknown service") }) {
		t.Fatal("VisitService(nope) = true")
	}
}

// TestFSM_concurrentReads reads every query while entries are applied; run
// with -race.
func TestFSM_concurrentReads(t *testing.T) {
	log := richWorld()
	f := fsm.New()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_ = viewOf(f)
				_ = f.Watch()
				f.VisitService("web", func(*fsm.Instance, string) {})
				var buf bytes.Buffer
				_ = f.WriteSnapshot(&buf)
			}
		}()
	}
	for round := 0; round < 20; round++ {
		g := fsm.New()
		for i, c := range log {
			f.ApplyBytes(uint64(round*len(log)+i+1), encode(t, c))
			g.ApplyBytes(uint64(i+1), encode(t, c))
		}
		if err := f.Restore(nopCloser(snapshotBytes(t, g))); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
}

func TestEncode_Decode_roundTrip(t *testing.T) {
	for _, c := range allCommands() {
		t.Run(c.Type().String(), func(t *testing.T) {
			b := encode(t, c)
			if b[0] != byte(c.Type()) {
				t.Fatalf("type byte %d, want %d", b[0], c.Type())
			}
			got, err := fsm.Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if got.Type() != c.Type() || !reflect.DeepEqual(got, c) {
				t.Fatalf("Decode(Encode(%+v)) = %+v", c, got)
			}
		})
	}
}

func TestDecode_errors(t *testing.T) {
	for _, b := range [][]byte{nil, {}, {0}, {200, '{', '}'}, {255}, {byte(fsm.CmdCampaign), '['}, {byte(fsm.CmdResign), '{', '"', 'x'}} {
		if c, err := fsm.Decode(b); !errors.Is(err, fsm.ErrDecode) || c != nil {
			t.Errorf("Decode(%q) = %v, %v; want ErrDecode", b, c, err)
		}
	}
}

func TestCommandType_String(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range allCommands() {
		s := c.Type().String()
		if seen[s] || s == "" {
			t.Errorf("%T: name %q empty or repeated", c, s)
		}
		seen[s] = true
	}
	if got := fsm.CommandType(99).String(); got != "unknown(99)" {
		t.Errorf("CommandType(99) = %q", got)
	}
}

// allCommands holds one valid command of every type, in type order.
func allCommands() []fsm.Command {
	return []fsm.Command{
		&fsm.RegisterNode{Name: "n1", Address: "10.0.0.1", Meta: map[string]string{"zone": "a"}},
		&fsm.DeregisterNode{Name: "n1"},
		&fsm.SetNodeStatus{Name: "n1", Status: fsm.NodeFailed},
		&fsm.RegisterInstance{Instance: fsm.Instance{ID: "web-1", Name: "web", Node: "n1", Address: "10.0.0.1", Port: 80,
			Tags: []string{"v1"}, Meta: map[string]string{"k": "v"}, Lease: "l1",
			Checks: []fsm.Check{{ID: "c1", Type: "http", HTTP: "http://x/", Interval: sec, Exec: []string{"a"}}}}},
		&fsm.DeregisterInstance{Node: "n1", ID: "web-1"},
		&fsm.UpdateCheck{Node: "n1", CheckID: "c1", Status: fsm.StatusPassing, Output: "ok"},
		&fsm.GrantLease{ID: "l1", TTL: 10 * sec, Node: "n1"},
		&fsm.RevokeLease{ID: "l1", Now: t0},
		&fsm.ExpireLease{ID: "l1", Now: t0},
		&fsm.AcquireLock{Name: "a", Lease: "l1", Node: "n1", Value: "v", Queue: true, LockDelay: sec, Now: t0},
		&fsm.ReleaseLock{Name: "a", Lease: "l1", OnlyWaiting: true, Token: 7, Now: t0},
		&fsm.Campaign{Election: "e", Candidate: "c1", Lease: "l1", Node: "n1", Value: "h:1", Service: "web-1", Now: t0},
		&fsm.Resign{Election: "e", Candidate: "c1", OnlyWaiting: true, Now: t0, Auth: fsm.Auth{By: "t1", OnSession: true}},
		&fsm.ACLBootstrap{Token: fsm.ACLToken{ID: "t0", SecretHash: "ab", Management: true}},
		&fsm.ACLSetToken{Token: fsm.ACLToken{ID: "t1", SecretHash: "cd", Description: "web", Rules: []byte(`{"service":"write"}`)}, Create: true},
		&fsm.ACLDeleteToken{ID: "t1"},
		&fsm.Transfer{Election: "e", From: "c1", To: "c2", Node: "n1", Now: t0, Auth: fsm.Auth{By: "t1"}},
	}
}

func nopCloser(b []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }

// Halt stops the registry before an entry its server cannot vouch for: it
// applies nothing more, says why (the first reason, however often it is
// told), and refuses snapshots.
func TestFSM_haltStopsBeforeTheEntry(t *testing.T) {
	f := fsm.New()
	if res := f.ApplyBytes(1, mustEncode(t, &fsm.RegisterNode{Name: "n1", Address: "10.0.0.1"})); res.Err != nil {
		t.Fatal(res.Err)
	}
	disk := errors.New("fdatasync failed")
	f.Halt(2, disk)
	f.Halt(3, errors.New("later"))
	res := f.ApplyBytes(2, mustEncode(t, &fsm.RegisterNode{Name: "n2", Address: "10.0.0.2"}))
	if !errors.Is(res.Err, fsm.ErrHalted) || !errors.Is(res.Err, disk) || !strings.Contains(res.Err.Error(), "entry 2") {
		t.Fatalf("apply after Halt: %v", res.Err)
	}
	if f.Index() != 1 || !errors.Is(f.Err(), disk) {
		t.Fatalf("index %d, err %v", f.Index(), f.Err())
	}
	if _, err := f.Snapshot(); err == nil {
		t.Fatal("a halted registry took a snapshot")
	}
	select {
	case <-f.Halted():
	default:
		t.Fatal("Halted not closed")
	}
}

func mustEncode(t *testing.T, c fsm.Command) []byte {
	t.Helper()
	b, err := fsm.Encode(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Size counts every record a snapshot encodes: one per node, instance,
// lease, lock, election and ACL token. The servers size their snapshot
// threshold by it.
func TestFSM_Size_countsEveryRecord(t *testing.T) {
	h := newHarness(t)
	if n := h.f.Size(); n != 0 {
		t.Fatalf("Size of an empty registry = %d", n)
	}
	for i, step := range []struct {
		what string
		cmd  fsm.Command
	}{
		{"a node", regNode("n1")},
		{"an instance", regInst("n1", "web-1", "web")},
		{"a lease", grant("l1")},
		{"a lock", acquire("job", "l1", t0)},
		{"an election", &fsm.Campaign{Election: "db", Candidate: "c1", Lease: "l1", Node: "n1", Now: t0}},
		{"an ACL token", bootstrapCmd()},
	} {
		h.ok(step.cmd)
		if n := h.f.Size(); n != i+1 {
			t.Fatalf("Size after %s = %d, want %d", step.what, n, i+1)
		}
	}
}
