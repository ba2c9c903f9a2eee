package fsm_test

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidecarhq/sidecar/fsm"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const sec = int64(time.Second)

// t0 is the leader time the tests start from (unix ns).
const t0 = int64(1_700_000_000) * sec

var allTables = []fsm.Table{fsm.TableNodes, fsm.TableServices, fsm.TableLeases, fsm.TableLocks, fsm.TableElections}

// harness applies commands at increasing log indexes, as Raft would.
type harness struct {
	t    testing.TB
	f    *fsm.FSM
	next uint64
}

func newHarness(t testing.TB, setup ...fsm.Command) *harness {
	t.Helper()
	h := &harness{t: t, f: fsm.New(), next: 1}
	for _, c := range setup {
		h.ok(c)
	}
	return h
}

// apply encodes c and applies it at the next index.
func (h *harness) apply(c fsm.Command) *fsm.Result {
	h.t.Helper()
	return h.applyBytes(encode(h.t, c))
}

func (h *harness) applyBytes(data []byte) *fsm.Result {
	h.t.Helper()
	idx := h.next
	h.next++
	r := h.f.ApplyBytes(idx, data)
	if r == nil {
		h.t.Fatalf("ApplyBytes(%d) returned nil", idx)
	}
	if r.Index != idx {
		h.t.Fatalf("Result.Index = %d, want %d", r.Index, idx)
	}
	return r
}

// ok applies c and fails the test if it reports an error.
func (h *harness) ok(c fsm.Command) *fsm.Result {
	h.t.Helper()
	r := h.apply(c)
	if r.Err != nil {
		h.t.Fatalf("apply %s %+v: %v", c.Type(), c, r.Err)
	}
	return r
}

// lastIndex is the index of the last entry applied.
func (h *harness) lastIndex() uint64 { return h.next - 1 }

func (h *harness) lock(name string) *fsm.Mutex {
	h.t.Helper()
	m, ok := h.f.Lock(name)
	if !ok {
		h.t.Fatalf("lock %q unknown", name)
	}
	return m
}

func (h *harness) election(name string) *fsm.Mutex {
	h.t.Helper()
	m, ok := h.f.Election(name)
	if !ok {
		h.t.Fatalf("election %q unknown", name)
	}
	return m
}

func encode(t testing.TB, c fsm.Command) []byte {
	t.Helper()
	b, err := fsm.Encode(c)
	if err != nil {
		t.Fatalf("encode %T: %v", c, err)
	}
	return b
}

// view is what a reader can see of a registry through its queries.
type view struct {
	Index     uint64
	Tables    []uint64
	Digest    string
	Nodes     []*fsm.Node
	Services  map[string][]string
	Instances map[string][]fsm.ServiceEntry
	ByNode    map[string][]*fsm.Instance
	Leases    []*fsm.Lease
	Locks     []*fsm.Mutex
	Elections []*fsm.Mutex
}

func viewOf(f *fsm.FSM) view {
	v := view{
		Index:     f.Index(),
		Digest:    f.Digest(),
		Nodes:     f.Nodes(),
		Services:  f.Services(),
		Instances: map[string][]fsm.ServiceEntry{},
		ByNode:    map[string][]*fsm.Instance{},
		Leases:    f.Leases(),
		Locks:     f.Locks(),
		Elections: f.Elections(),
	}
	for _, t := range allTables {
		v.Tables = append(v.Tables, f.TableIndex(t))
	}
	for svc := range v.Services {
		v.Instances[svc] = f.ServiceInstances(svc)
	}
	for _, n := range v.Nodes {
		v.ByNode[n.Name] = f.NodeInstances(n.Name)
	}
	return v
}

func tableIndexes(f *fsm.FSM) []uint64 {
	var out []uint64
	for _, t := range allTables {
		out = append(out, f.TableIndex(t))
	}
	return out
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// requireUnchanged applies c, which must fail with want (or succeed when
// want is nil), and checks it changed nothing a reader can see and woke no
// watcher.
func requireUnchanged(t *testing.T, h *harness, c fsm.Command, want error) *fsm.Result {
	t.Helper()
	return requireUnchangedBytes(t, h, encode(t, c), want)
}

func requireUnchangedBytes(t *testing.T, h *harness, data []byte, want error) *fsm.Result {
	t.Helper()
	before := viewOf(h.f)
	watch := h.f.Watch()
	r := h.applyBytes(data)
	switch {
	case want == nil && r.Err != nil:
		t.Fatalf("err = %v, want nil", r.Err)
	case want != nil && !errors.Is(r.Err, want):
		t.Fatalf("err = %v, want %v", r.Err, want)
	}
	after := viewOf(h.f)
	before.Index, after.Index = 0, 0
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("registry changed:\nbefore %+v\nafter  %+v", before, after)
	}
	if closed(watch) {
		t.Fatal("Watch fired for a command that changed nothing")
	}
	return r
}

// snapshotBytes writes f's snapshot.
func snapshotBytes(t testing.TB, f *fsm.FSM) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := f.WriteSnapshot(&buf); err != nil {
		t.Fatalf("WriteSnapshot: %v", err)
	}
	return buf.Bytes()
}

// Command builders over a fixed cast.

func regNode(name string) *fsm.RegisterNode {
	return &fsm.RegisterNode{Name: name, Address: "10.0.0.1"}
}

func grant(id string) *fsm.GrantLease {
	return &fsm.GrantLease{ID: id, TTL: 10 * sec}
}

func regInst(node, id, svc string, checks ...fsm.Check) *fsm.RegisterInstance {
	return &fsm.RegisterInstance{Instance: fsm.Instance{
		ID: id, Name: svc, Node: node, Address: "10.0.0.1", Port: 8080, Checks: checks,
	}}
}

func ttlCheck(id string) fsm.Check { return fsm.Check{ID: id, Type: "ttl", TTL: 10 * sec} }

func acquire(name, lease string, now int64) *fsm.AcquireLock {
	return &fsm.AcquireLock{Name: name, Lease: lease, Node: "n1", Now: now}
}

func enqueue(name, lease string, now int64) *fsm.AcquireLock {
	return &fsm.AcquireLock{Name: name, Lease: lease, Node: "n1", Queue: true, Now: now}
}

func release(name, lease string, now int64) *fsm.ReleaseLock {
	return &fsm.ReleaseLock{Name: name, Lease: lease, Now: now}
}

func campaign(election, candidate, lease string, now int64) *fsm.Campaign {
	return &fsm.Campaign{Election: election, Candidate: candidate, Lease: lease, Node: "n1", Value: candidate + ":80", Now: now}
}

func resign(election, candidate string, now int64) *fsm.Resign {
	return &fsm.Resign{Election: election, Candidate: candidate, Now: now}
}

// holderID is the ID of a mutex's holder, "" when vacant.
func holderID(m *fsm.Mutex) string {
	if m.Holder == nil {
		return ""
	}
	return m.Holder.ID
}

func waiterIDs(m *fsm.Mutex) []string {
	var out []string
	for _, w := range m.Waiters {
		out = append(out, w.ID)
	}
	return out
}

// fataler is what invariant checks need of testing.T and rapid.T.
type fataler interface {
	Helper()
	Fatalf(format string, args ...any)
}

// checkInvariants fails when the registry is in a state Apply must never
// produce.
func checkInvariants(t fataler, f *fsm.FSM) {
	t.Helper()
	leases := map[string]bool{}
	for _, l := range f.Leases() {
		leases[l.ID] = true
	}
	nodes := map[string]bool{}
	for _, n := range f.Nodes() {
		nodes[n.Name] = true
	}
	check := func(kind string, m *fsm.Mutex) {
		seen := map[string]bool{}
		if m.Holder != nil {
			h := m.Holder
			if !leases[h.Lease] {
				t.Fatalf("%s %q: holder %q on lease %q that does not exist", kind, m.Name, h.ID, h.Lease)
			}
			if h.Token == 0 || h.Token > m.LastToken {
				t.Fatalf("%s %q: holder token %d, last token %d", kind, m.Name, h.Token, m.LastToken)
			}
			if kind == "lock" && h.ID != h.Lease {
				t.Fatalf("lock %q: holder id %q is not its lease %q", m.Name, h.ID, h.Lease)
			}
			seen[h.ID] = true
		}
		for _, w := range m.Waiters {
			if seen[w.ID] {
				t.Fatalf("%s %q: %q is both holder and waiter, or waits twice", kind, m.Name, w.ID)
			}
			seen[w.ID] = true
			if !leases[w.Lease] {
				t.Fatalf("%s %q: waiter %q on lease %q that does not exist", kind, m.Name, w.ID, w.Lease)
			}
			if w.Token != 0 {
				t.Fatalf("%s %q: waiter %q has token %d", kind, m.Name, w.ID, w.Token)
			}
		}
	}
	for _, m := range f.Locks() {
		check("lock", m)
	}
	for _, m := range f.Elections() {
		check("election", m)
	}
	for _, n := range f.Nodes() {
		for _, in := range f.NodeInstances(n.Name) {
			if in.Lease != "" && !leases[in.Lease] {
				t.Fatalf("instance %q on lease %q that does not exist", in.ID, in.Lease)
			}
			for _, ch := range in.Checks {
				owner, ok := f.CheckOwner(n.Name, ch.ID)
				if !ok || owner.ID != in.ID {
					t.Fatalf("check %q of instance %q not owned by it", ch.ID, in.ID)
				}
				if !fsm.ValidStatus(ch.Status) {
					t.Fatalf("check %q has status %q", ch.ID, ch.Status)
				}
			}
		}
	}
	// The services list, kept up to date entry by entry, is the one its
	// instances make.
	want := map[string]map[string]bool{}
	for _, n := range f.Nodes() {
		for _, in := range f.NodeInstances(n.Name) {
			if want[in.Name] == nil {
				want[in.Name] = map[string]bool{}
			}
			for _, tag := range in.Tags {
				want[in.Name][tag] = true
			}
		}
	}
	got := f.Services()
	if len(got) != len(want) {
		t.Fatalf("services list %v, instances make %v", got, want)
	}
	for name, tags := range got {
		if len(tags) != len(want[name]) {
			t.Fatalf("service %q lists tags %v, its instances have %v", name, tags, want[name])
		}
		for _, tag := range tags {
			if !want[name][tag] {
				t.Fatalf("service %q lists tag %q no instance has", name, tag)
			}
		}
	}
	for svc := range f.Services() {
		for _, e := range f.ServiceInstances(svc) {
			if !nodes[e.Instance.Node] {
				t.Fatalf("service %q: instance %q on node %q that does not exist", svc, e.Instance.ID, e.Instance.Node)
			}
		}
	}
}

// tokenTracker checks that every change of a mutex's holder comes with a
// token greater than every token seen before for that name.
type tokenTracker struct {
	holder map[string]fsm.Holder
	max    map[string]uint64
}

func newTokenTracker() *tokenTracker {
	return &tokenTracker{holder: map[string]fsm.Holder{}, max: map[string]uint64{}}
}

func (tr *tokenTracker) observe(t fataler, f *fsm.FSM) {
	t.Helper()
	see := func(key string, m *fsm.Mutex) {
		if m.LastToken < tr.max[key] {
			t.Fatalf("%s: last token went back from %d to %d", key, tr.max[key], m.LastToken)
		}
		if m.Holder == nil {
			delete(tr.holder, key)
			return
		}
		prev, had := tr.holder[key]
		if !had || prev.ID != m.Holder.ID || prev.Token != m.Holder.Token {
			if m.Holder.Token <= tr.max[key] {
				t.Fatalf("%s: new holder %q got token %d, not above %d", key, m.Holder.ID, m.Holder.Token, tr.max[key])
			}
		}
		tr.holder[key] = *m.Holder
		if m.Holder.Token > tr.max[key] {
			tr.max[key] = m.Holder.Token
		}
		if m.LastToken > tr.max[key] {
			tr.max[key] = m.LastToken
		}
	}
	for _, m := range f.Locks() {
		see("lock/"+m.Name, m)
	}
	for _, m := range f.Elections() {
		see("election/"+m.Name, m)
	}
}

// applyCase is one command applied on top of a setup log.
type applyCase struct {
	name  string
	setup []fsm.Command
	cmd   fsm.Command
	// err is the sentinel the command fails with; nil for a success.
	err error
	// noop marks a success that must change nothing.
	noop bool
	// tables are the tables a success stamps with its index; the others
	// must keep theirs.
	tables []fsm.Table
	check  func(t *testing.T, h *harness, r *fsm.Result)
}

func runApplyCases(t *testing.T, cases []applyCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.setup...)
			var r *fsm.Result
			if tc.err != nil || tc.noop {
				r = requireUnchanged(t, h, tc.cmd, tc.err)
			} else {
				want := tableIndexes(h.f)
				watch := h.f.Watch()
				r = h.ok(tc.cmd)
				if !closed(watch) {
					t.Error("Watch did not fire")
				}
				for _, tb := range tc.tables {
					want[tb] = h.lastIndex()
				}
				if got := tableIndexes(h.f); !reflect.DeepEqual(got, want) {
					t.Errorf("table indexes = %v, want %v", got, want)
				}
			}
			if tc.check != nil {
				tc.check(t, h, r)
			}
		})
	}
}
