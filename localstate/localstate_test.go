package localstate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/sidecarhq/sidecar/fsm"
)

func svc(id string, port int) Service {
	return Service{Source: SourceAPI, Instance: fsm.Instance{ID: id, Name: "web", Node: "n1", Port: port,
		Tags: []string{"a"}, Meta: map[string]string{"k": "v"},
		Checks: []fsm.Check{{ID: id + ":ttl", Type: "ttl", TTL: 1e10, Status: "passing", Output: "ok", ModifyIndex: 9}}}}
}

func TestStore_keepsWritesAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.Adopted() {
		t.Fatal("a new file is reported as adopted")
	}
	// Concurrent writers share commits; every one of them is kept.
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if err := s.PutService(svc(fmt.Sprintf("w%d-%d", w, i), i)); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if _, err := s.DeleteService("w0-0"); err != nil {
		t.Fatal(err)
	}
	if err := s.PutCandidacy(Candidacy{Election: "db", Candidate: "a", Value: "v"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Adopted() {
		t.Fatal("a file with records (of a release before the mark) is not reported as adopted")
	}
	if s.Len() != 399 {
		t.Fatalf("reopened with %d services, want 399", s.Len())
	}
	if _, ok, _ := s.Service("w0-0"); ok {
		t.Fatal("a deleted service came back")
	}
	got, ok, err := s.Service("w3-7")
	if err != nil || !ok || got.Instance.Port != 7 || got.Source != SourceAPI || got.Instance.Checks[0].Status != "" || got.Instance.Checks[0].ModifyIndex != 0 {
		t.Fatalf("w3-7 after reopen: %+v %v; want its definition without status or indexes", got, ok)
	}
	if c := s.Candidacies(); len(c) != 1 || c[0] != (Candidacy{Election: "db", Candidate: "a", Value: "v"}) {
		t.Fatalf("candidacies after reopen: %+v", c)
	}
}

// A damaged record stops Open with a message naming the file and the
// record, never a start that silently owns less.
func TestStore_damagedRecordRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutService(svc("web-1", 80)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketServices)
		v := append([]byte(nil), b.Get([]byte("web-1"))...)
		v[len(v)-3] ^= 0x20 // one flipped bit in the JSON
		return b.Put([]byte("web-1"), v)
	})
	db.Close()
	_, err = Open(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "web-1") || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("open of a damaged record: %v; want an error naming the file, the record and the checksum", err)
	}
}

func TestStore_inMemory(t *testing.T) {
	s, err := Open("")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutService(svc("a", 1)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Services(); err != nil || len(got) != 1 || got[0].Instance.ID != "a" {
		t.Fatalf("services: %+v", got)
	}
	s.Close()
}

func TestStore_writeAfterCloseFails(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), FileName))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := s.PutService(svc("a", 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after close: %v, want ErrClosed", err)
	}
	if _, ok, _ := s.Service("a"); ok {
		t.Fatal("a write that failed is visible")
	}
}

func TestStore_unwritableDir(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root writes anywhere")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o500)
	defer os.Chmod(dir, 0o700)
	if _, err := Open(filepath.Join(dir, FileName)); err == nil {
		t.Fatal("open in a read-only dir succeeded")
	}
}

// SameDefinition compares every field of an instance and of its checks
// except the ones the registry owns; a field added to fsm.Instance or
// fsm.Check must be compared (or listed here as the registry's).
func TestSameDefinition_everyField(t *testing.T) {
	registryOwned := map[string]bool{"CreateIndex": true, "ModifyIndex": true, "Checks.Status": true,
		"Checks.Output": true, "Checks.ModifyIndex": true}
	base := svc("web-1", 80).Instance
	base.Checks[0].Exec = []string{"x"}
	base.Weight = 3 // 0 and 1 are the same weight
	check := func(field string, mutate func(in *fsm.Instance)) {
		in := Definition(base)
		mutate(&in)
		def := Definition(base)
		same := SameDefinition(&in, &def)
		if sameSum := DefinitionSum(&in) == DefinitionSum(&def); sameSum != same {
			t.Errorf("a change of %s: SameDefinition %v but equal sums %v", field, same, sameSum)
		}
		if registryOwned[field] && !same {
			t.Errorf("a change of %s (the registry's) counts as a different definition", field)
		}
		if !registryOwned[field] && same {
			t.Errorf("a change of %s goes unnoticed", field)
		}
	}
	it := reflect.TypeOf(fsm.Instance{})
	for i := 0; i < it.NumField(); i++ {
		f := it.Field(i)
		if f.Name == "Checks" {
			ct := reflect.TypeOf(fsm.Check{})
			for j := 0; j < ct.NumField(); j++ {
				cf := ct.Field(j)
				check("Checks."+cf.Name, func(in *fsm.Instance) { perturb(reflect.ValueOf(&in.Checks[0]).Elem().Field(j)) })
			}
			check("Checks", func(in *fsm.Instance) { in.Checks = nil })
			continue
		}
		check(f.Name, func(in *fsm.Instance) { perturb(reflect.ValueOf(in).Elem().Field(i)) })
	}
}

// perturb changes a value of a basic kind, a slice or a map.
func perturb(v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		v.SetString(v.String() + "x")
	case reflect.Int, reflect.Int64:
		v.SetInt(v.Int() + 1)
	case reflect.Uint64:
		v.SetUint(v.Uint() + 1)
	case reflect.Slice:
		v.Set(reflect.Append(v, reflect.ValueOf("y")))
	case reflect.Map:
		v.Set(reflect.ValueOf(map[string]string{"other": "1"}))
	default:
		panic("perturb: unhandled kind " + v.Kind().String())
	}
}

// fakeRegistry is a registry of one node's instances.
type fakeRegistry struct {
	mu      sync.Mutex
	node    *fsm.Node
	byID    map[string]*fsm.Instance
	index   uint64
	changed chan struct{}
	// journal of changed ids by index; from: complete after this index.
	journal []struct {
		index uint64
		id    string
	}
	from     uint64
	tracking bool
}

func (r *fakeRegistry) Index() uint64 { r.mu.Lock(); defer r.mu.Unlock(); return r.index }
func (r *fakeRegistry) TrackNode(string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.tracking {
		r.tracking, r.from = true, r.index
	}
}
func (r *fakeRegistry) NodeChanges(_ string, since uint64) ([]string, uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.tracking || since < r.from {
		return nil, r.index, false
	}
	var ids []string
	for _, e := range r.journal {
		if e.index > since {
			ids = append(ids, e.id)
		}
	}
	return ids, r.index, true
}

// forget makes the journal unable to tell what changed (a restore).
func (r *fakeRegistry) forget() { r.mu.Lock(); r.from = r.index + 1; r.mu.Unlock() }

func newFakeRegistry() *fakeRegistry {
	return &fakeRegistry{node: &fsm.Node{Name: "n1"}, byID: map[string]*fsm.Instance{}, changed: make(chan struct{})}
}

func (r *fakeRegistry) Watch() <-chan struct{}  { r.mu.Lock(); defer r.mu.Unlock(); return r.changed }
func (r *fakeRegistry) NodeIndex(string) uint64 { r.mu.Lock(); defer r.mu.Unlock(); return r.index }
func (r *fakeRegistry) Node(string) (*fsm.Node, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.node == nil {
		return nil, false
	}
	n := *r.node
	return &n, true
}
func (r *fakeRegistry) Instance(_, id string) (*fsm.Instance, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	in, ok := r.byID[id]
	if !ok {
		return nil, false
	}
	c := Definition(*in)
	return &c, true
}
func (r *fakeRegistry) VisitNode(_ string, fn func(in *fsm.Instance)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, in := range r.byID {
		fn(in)
	}
}

// Apply plays a writer that writes into the fake registry.
func (r *fakeRegistry) Apply(_ context.Context, cmd fsm.Command) (*fsm.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch c := cmd.(type) {
	case *fsm.RegisterNode:
		r.node = &fsm.Node{Name: c.Name}
	case *fsm.RegisterInstance:
		if c.Instance.Lease == "gone" {
			return nil, fmt.Errorf("%w: gone", fsm.ErrUnknownLease)
		}
		in := Definition(c.Instance)
		for i := range in.Checks {
			in.Checks[i].Status = fsm.StatusCritical
		}
		r.byID[in.ID] = &in
	case *fsm.DeregisterInstance:
		delete(r.byID, c.ID)
	}
	r.index++
	switch c := cmd.(type) {
	case *fsm.RegisterInstance:
		r.journal = append(r.journal, struct {
			index uint64
			id    string
		}{r.index, c.Instance.ID})
	case *fsm.DeregisterInstance:
		r.journal = append(r.journal, struct {
			index uint64
			id    string
		}{r.index, c.ID})
	}
	close(r.changed)
	r.changed = make(chan struct{})
	return &fsm.Result{Index: r.index}, nil
}

type countingWriter struct {
	*fakeRegistry
	mu   sync.Mutex
	cmds []string
}

func (w *countingWriter) Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error) {
	w.mu.Lock()
	w.cmds = append(w.cmds, cmd.Type().String())
	w.mu.Unlock()
	return w.fakeRegistry.Apply(ctx, cmd)
}

func TestAntiEntropy_writesOnlyTheDifference(t *testing.T) {
	store, _ := Open("")
	reg := newFakeRegistry()
	w := &countingWriter{fakeRegistry: reg}
	var statuses []string
	var forgotten []string
	ae := NewAntiEntropy(Config{Node: "n1",
		NodeEntry:   func() *fsm.RegisterNode { return &fsm.RegisterNode{Name: "n1"} },
		CheckStatus: func(id, st string) { statuses = append(statuses, id+"="+st) },
		Forgotten:   func(id string) { forgotten = append(forgotten, id) },
	}, store, reg, w)
	ctx := context.Background()
	for _, id := range []string{"same", "missing", "changed"} {
		store.PutService(svc(id, 80))
	}
	store.PutService(Service{Source: SourceAPI, Instance: fsm.Instance{ID: "leased", Name: "web", Node: "n1", Lease: "gone"}})
	same, changed := Definition(svc("same", 80).Instance), Definition(svc("changed", 81).Instance)
	same.Checks[0].Status = "passing"
	reg.byID["same"], reg.byID["changed"] = &same, &changed
	reg.byID["unknown"] = &fsm.Instance{ID: "unknown", Name: "web", Node: "n1"}
	reg.node = nil

	if err := ae.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, c := range w.cmds {
		got[c]++
	}
	want := map[string]int{"register_node": 1, "register_instance": 3, "deregister_instance": 1}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("first sync wrote %v, want %v", got, want)
	}
	if _, ok, _ := store.Service("leased"); ok || !reflect.DeepEqual(forgotten, []string{"leased"}) {
		t.Fatalf("an instance whose lease is gone stays local (forgotten %v)", forgotten)
	}
	if !reflect.DeepEqual(statuses, []string{"same:ttl=passing"}) {
		t.Fatalf("check statuses fed back: %v", statuses)
	}
	for _, id := range []string{"same", "missing", "changed"} {
		in, ok := reg.byID[id]
		def, _, _ := store.Service(id)
		if !ok || !SameDefinition(in, &def.Instance) {
			t.Fatalf("%s after sync: %+v", id, in)
		}
	}
	if _, ok := reg.byID["unknown"]; ok {
		t.Fatal("an instance the agent does not own stayed")
	}

	w.cmds = nil
	if err := ae.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if len(w.cmds) != 0 {
		t.Fatalf("a sync with nothing to fix wrote %v", w.cmds)
	}
}

func TestAntiEntropy_runFollowsChanges(t *testing.T) {
	store, _ := Open("")
	reg := newFakeRegistry()
	w := &countingWriter{fakeRegistry: reg}
	const grace = 300 * time.Millisecond
	ae := NewAntiEntropy(Config{Node: "n1", MinInterval: 1, UnknownGrace: grace}, store, reg, w)
	for i := 0; i < 50; i++ {
		store.PutService(svc(fmt.Sprint("web-", i), 80))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := ae.Sync(ctx); err != nil { // as the agent does at start
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { ae.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	full := func() float64 { return testutil.ToFloat64(ae.syncs) }
	fulls := full()

	// Removed behind the agent's back: put back on the change alone,
	// looking at that instance only.
	reg.Apply(ctx, &fsm.DeregisterInstance{Node: "n1", ID: "web-7"})
	waitUntil(t, func() bool { _, ok := reg.Instance("n1", "web-7"); return ok })
	// An instance the agent does not own: removed.
	reg.Apply(ctx, &fsm.RegisterInstance{Instance: fsm.Instance{ID: "stranger", Name: "x", Node: "n1"}})
	waitUntil(t, func() bool { _, ok := reg.Instance("n1", "stranger"); return !ok })
	// A write of unknown outcome may still land: left alone for the grace
	// (a full comparison meanwhile does not write it either), then put
	// right.
	store.PutService(svc("kicked", 80))
	unknownAt := time.Now()
	ae.Unknown("kicked")
	if err := ae.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := reg.Instance("n1", "kicked"); ok {
		t.Fatal("an instance in doubt was written within its grace")
	}
	fulls = full()
	waitUntil(t, func() bool { _, ok := reg.Instance("n1", "kicked"); return ok })
	if d := time.Since(unknownAt); d < grace {
		t.Fatalf("an instance in doubt was written %v after the unknown outcome, before the %v grace", d, grace)
	}
	if full() != fulls {
		t.Fatalf("changes of single instances cost %v full comparisons", full()-fulls)
	}
	// When the registry cannot tell what changed (a restore), a full
	// comparison finds what went missing.
	reg.mu.Lock()
	delete(reg.byID, "web-9")
	reg.mu.Unlock()
	reg.forget()
	reg.Apply(ctx, &fsm.RegisterNode{Name: "n1"}) // a change to wake the loop
	waitUntil(t, func() bool { _, ok := reg.Instance("n1", "web-9"); return ok })
	if full() == fulls {
		t.Fatal("no full comparison after the journal could not tell")
	}
	// That clean full comparison is where the changes are followed from
	// again: the next change costs no full comparison.
	fulls = full()
	reg.Apply(ctx, &fsm.DeregisterInstance{Node: "n1", ID: "web-3"})
	waitUntil(t, func() bool { _, ok := reg.Instance("n1", "web-3"); return ok })
	if full() != fulls {
		t.Fatalf("after a clean full comparison a single change cost %v more", full()-fulls)
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A definition's sum does not depend on the order a map is walked in.
func TestDefinitionSum_metaOrder(t *testing.T) {
	in := fsm.Instance{ID: "a", Name: "web", Meta: map[string]string{}}
	for i := 0; i < 20; i++ {
		in.Meta[fmt.Sprint("k", i)] = fmt.Sprint("v", i)
	}
	want := DefinitionSum(&in)
	for i := 0; i < 50; i++ {
		c := Definition(in)
		if DefinitionSum(&c) != want {
			t.Fatal("equal definitions, different sums")
		}
	}
	in.Meta["k1"], in.Meta["k2"] = "v2", "v1"
	if DefinitionSum(&in) == want {
		t.Fatal("meta values swapped between keys: same sum")
	}
}

// A comparison that waits behind a registration of the same id, which then
// ends with an unknown outcome, must not write: the registration's entry
// may still land (the black-box suite saw it applied twice).
func TestAntiEntropy_waitsBehindAnUnknownRegistration(t *testing.T) {
	store, _ := Open("")
	reg := newFakeRegistry()
	w := &countingWriter{fakeRegistry: reg}
	ae := NewAntiEntropy(Config{Node: "n1", UnknownGrace: time.Minute}, store, reg, w)
	store.PutService(svc("web-1", 80))
	unlock := store.LockID("web-1") // a registration of web-1 in flight
	done := make(chan error, 1)
	go func() { done <- ae.Sync(context.Background()) }()
	waitUntil(t, func() bool { return testutil.ToFloat64(ae.syncs) == 1 })
	ae.Unknown("web-1") // the registration's outcome: unknown
	unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.cmds {
		if c == "register_instance" {
			t.Fatalf("anti-entropy wrote an instance whose registration had just ended unknown: %v", w.cmds)
		}
	}
}

// A first start on a new data dir that died before the agent adopted the
// registry's instances leaves a file that exists and owns nothing: the
// next start must still adopt them, not let anti-entropy remove them. The
// mark, once written, survives a reopen.
func TestStore_adoptionIsRecordedNotInferred(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close() // the first start died here
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.Adopted() {
		t.Fatal("an existing empty file that never adopted is reported as adopted")
	}
	if err := s.MarkAdopted(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Adopted() {
		t.Fatal("the adoption mark did not survive a reopen")
	}
}

// Writes of different instance ids never wait for each other, however
// many there are, while writes of one id do; the locks of ids nobody
// holds are not kept.
func TestStore_lockIDSerialisesOneIDOnly(t *testing.T) {
	store, _ := Open("")
	unlock := store.LockID("web-1") // a registration of web-1 in flight
	second := make(chan struct{})
	go func() {
		u := store.LockID("web-1")
		close(second)
		u()
	}()
	others := make(chan struct{})
	go func() {
		defer close(others)
		for i := range 1000 {
			store.LockID(fmt.Sprintf("other-%d", i))()
		}
	}()
	select {
	case <-others:
	case <-time.After(10 * time.Second):
		t.Fatal("a write of another id waited for web-1's")
	}
	select {
	case <-second:
		t.Fatal("a second write of web-1 did not wait for the first")
	default:
	}
	unlock()
	<-second
	store.idsMu.Lock()
	defer store.idsMu.Unlock()
	if n := len(store.ids); n != 0 {
		t.Fatalf("%d id locks kept after every writer is done", n)
	}
}

// A definition keeps an instance's tags (anti-entropy compares them), and
// an empty list is the same as none.
func TestDefinition_tags(t *testing.T) {
	in := svc("web-1", 80).Instance
	if d := Definition(in); len(d.Tags) != 1 || d.Tags[0] != "a" {
		t.Fatalf("Definition dropped the tags: %v", d.Tags)
	}
	other := in
	other.Tags = []string{"b"}
	if SameDefinition(&in, &other) || DefinitionSum(&in) == DefinitionSum(&other) {
		t.Fatal("a change of tags is not a change of definition")
	}
	none, empty := in, in
	none.Tags, empty.Tags = nil, []string{}
	if !SameDefinition(&none, &empty) || DefinitionSum(&none) != DefinitionSum(&empty) {
		t.Fatal("no tags and an empty list differ")
	}
}

// flakyWriter fails its first writes of instances with err.
type flakyWriter struct {
	*fakeRegistry
	mu       sync.Mutex
	failures int
	err      error
}

func (w *flakyWriter) Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error) {
	switch cmd.(type) {
	case *fsm.RegisterInstance, *fsm.DeregisterInstance:
		w.mu.Lock()
		fail := w.failures > 0
		if fail {
			w.failures--
		}
		w.mu.Unlock()
		if fail {
			return nil, w.err
		}
	}
	return w.fakeRegistry.Apply(ctx, cmd)
}

// A full comparison whose write is refused says so (a refusal puts nothing
// in doubt), and the next one puts it right: a missing instance and one
// the agent does not own alike.
func TestAntiEntropy_Sync_reportsARefusedWrite(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(store *Store, reg *fakeRegistry)
		check func(reg *fakeRegistry) bool
	}{
		{"missing", func(store *Store, _ *fakeRegistry) { store.PutService(svc("web-1", 80)) },
			func(reg *fakeRegistry) bool { _, ok := reg.Instance("n1", "web-1"); return ok }},
		{"stranger", func(_ *Store, reg *fakeRegistry) {
			reg.Apply(context.Background(), &fsm.RegisterInstance{Instance: fsm.Instance{ID: "stranger", Name: "x", Node: "n1"}})
		}, func(reg *fakeRegistry) bool { _, ok := reg.Instance("n1", "stranger"); return !ok }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, _ := Open("")
			reg := newFakeRegistry()
			tc.setup(store, reg)
			w := &flakyWriter{fakeRegistry: reg, failures: 1, err: fmt.Errorf("%w: n1", fsm.ErrUnknownNode)}
			ae := NewAntiEntropy(Config{Node: "n1"}, store, reg, w)
			if err := ae.Sync(context.Background()); err == nil {
				t.Fatal("a comparison whose write was refused reported nothing")
			}
			if err := ae.Sync(context.Background()); err != nil || !tc.check(reg) {
				t.Fatalf("the next comparison: %v, put right %v", err, tc.check(reg))
			}
		})
	}
}

// A change looked at alone whose write is refused is tried again at once
// by a full comparison, not left for the backstop an interval later.
func TestAntiEntropy_Run_retriesARefusedWrite(t *testing.T) {
	store, _ := Open("")
	reg := newFakeRegistry()
	w := &flakyWriter{fakeRegistry: reg, err: fmt.Errorf("%w: n1", fsm.ErrUnknownNode)}
	ae := NewAntiEntropy(Config{Node: "n1", MinInterval: 1, Interval: time.Hour}, store, reg, w)
	store.PutService(svc("web-1", 80))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := ae.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { ae.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	// Two refusals: the journal names web-1 twice (registered by the sync
	// above, then deregistered), so the pass of changes tries it twice.
	w.mu.Lock()
	w.failures = 2
	w.mu.Unlock()
	reg.Apply(ctx, &fsm.DeregisterInstance{Node: "n1", ID: "web-1"})
	waitUntil(t, func() bool { _, ok := reg.Instance("n1", "web-1"); return ok })
}

// The timings an agent runs anti-entropy with when its configuration leaves
// them out (README: a full comparison every 30 s, a change looked at after
// at most 1 s, an unknown write's outcome waited for 30 s); set ones stay.
func TestAntiEntropy_defaultTimings(t *testing.T) {
	store, _ := Open("")
	reg := newFakeRegistry()
	for _, c := range []struct{ set, want Config }{
		{Config{}, Config{Interval: 30 * time.Second, MinInterval: time.Second, UnknownGrace: 30 * time.Second}},
		{Config{Interval: -1, MinInterval: -1, UnknownGrace: -1}, Config{Interval: 30 * time.Second, MinInterval: time.Second, UnknownGrace: 30 * time.Second}},
		{Config{Interval: 5 * time.Second, MinInterval: 2 * time.Millisecond, UnknownGrace: time.Minute}, Config{Interval: 5 * time.Second, MinInterval: 2 * time.Millisecond, UnknownGrace: time.Minute}},
	} {
		c.set.Node = "n1"
		got := NewAntiEntropy(c.set, store, reg, reg).cfg
		if got.Interval != c.want.Interval || got.MinInterval != c.want.MinInterval || got.UnknownGrace != c.want.UnknownGrace {
			t.Errorf("configured %v/%v/%v: runs with interval %v, min interval %v, unknown grace %v; want %v/%v/%v",
				c.set.Interval, c.set.MinInterval, c.set.UnknownGrace, got.Interval, got.MinInterval, got.UnknownGrace,
				c.want.Interval, c.want.MinInterval, c.want.UnknownGrace)
		}
	}
}
