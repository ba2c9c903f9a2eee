package fsm_test

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"

	"pgregory.net/rapid"

	"github.com/sidecarhq/sidecar/fsm"
)

// entry is one generated Raft log entry.
type entry struct {
	index uint64
	data  []byte
	cmd   fsm.Command // nil for an entry that is not a command
}

func (e entry) String() string { return fmt.Sprintf("%d:%q", e.index, e.data) }

// GoString keeps rapid's report of a failing log readable.
func (e entry) GoString() string { return e.String() }

// uniform picks one of items, each as likely (rapid.SampledFrom favours
// the first ones, which would starve the later command kinds).
func uniform[E any](items ...E) *rapid.Generator[E] {
	return rapid.Map(rapid.Permutation(items), func(p []E) E { return p[0] })
}

// A small alphabet, so that commands collide: the same names, leases and
// candidates come back again and again. Invalid commands come from
// invalidate.
var (
	genNode      = uniform("n1", "n2")
	genLease     = uniform("l1", "l1", "l2", "l2", "l3", fsm.LeaseIDFromIndex(3))
	genLockName  = uniform("a", "a", "b")
	genElection  = uniform("e1", "e1", "e2")
	genCandidate = uniform("c1", "c2", "c3")
	genInstance  = uniform("i1", "i2", "i3")
	genService   = uniform("web", "Web", "db")
	genCheckID   = uniform("k1", "k2", "k3")
	genStatus    = uniform(fsm.StatusPassing, fsm.StatusWarning, fsm.StatusCritical)
	genNodeState = uniform(fsm.NodeAlive, fsm.NodeFailed, fsm.NodeLeft)
	genValue     = uniform("", "v1", "v2")
	genTTL       = uniform[int64](10*sec, 30*sec)
	genDelay     = uniform[int64](0, 0, sec, 3*sec)
	genTick      = uniform[int64](0, 1, sec/2, sec, 2*sec, 4*sec)
	genSkew      = uniform[int64](0, 0, 0, 1, sec)
)

// invalidate breaks one field of c so that validation refuses it.
func invalidate(c fsm.Command) {
	const bad = "bad name"
	switch c := c.(type) {
	case *fsm.RegisterNode:
		c.Name = bad
	case *fsm.DeregisterNode:
		c.Name = bad
	case *fsm.SetNodeStatus:
		c.Status = "gone"
	case *fsm.RegisterInstance:
		c.Instance.Port = -1
	case *fsm.DeregisterInstance:
		c.ID = bad
	case *fsm.UpdateCheck:
		c.Status = "bogus"
	case *fsm.GrantLease:
		c.TTL = 0
	case *fsm.RevokeLease:
		c.ID = bad
	case *fsm.ExpireLease:
		c.ID = ""
	case *fsm.AcquireLock:
		c.LockDelay = -1
	case *fsm.ReleaseLock:
		c.Name = bad
	case *fsm.Campaign:
		c.Candidate = bad
	case *fsm.Resign:
		c.Election = ""
	}
}

// actor draws who acts: often one the registry knows (a lease that exists,
// a holder or waiter of the mutex), else anyone of gen's alphabet.
func actor(t *rapid.T, known []string, gen *rapid.Generator[string]) string {
	if len(known) > 0 && rapid.IntRange(0, 2).Draw(t, "known") > 0 {
		return uniform(known...).Draw(t, "actor")
	}
	return gen.Draw(t, "actor")
}

// knownInstance draws, more often than not, an instance the registry holds.
func knownInstance(t *rapid.T, f *fsm.FSM) *fsm.Instance {
	var all []*fsm.Instance
	for _, n := range f.Nodes() {
		all = append(all, f.NodeInstances(n.Name)...)
	}
	if len(all) == 0 || rapid.IntRange(0, 2).Draw(t, "known") == 0 {
		return nil
	}
	return uniform(all...).Draw(t, "instance")
}

func leaseIDs(f *fsm.FSM) []string {
	var out []string
	for _, l := range f.Leases() {
		out = append(out, l.ID)
	}
	return out
}

func holdIDs(m *fsm.Mutex, ok bool) []string {
	if !ok {
		return nil
	}
	out := waiterIDs(m)
	if m.Holder != nil {
		out = append(out, m.Holder.ID, m.Holder.ID) // the holder twice as often
	}
	return out
}

// genCommand draws one command; now is leader time, which the proposer
// stamps and which may lag a little behind (another leader's clock). The
// registry the log has built so far steers who acts.
func genCommand(t *rapid.T, f *fsm.FSM, now int64, kinds []fsm.CommandType) fsm.Command {
	at := now - genSkew.Draw(t, "skew")
	lease := func() string { return actor(t, leaseIDs(f), genLease) }
	switch uniform(kinds...).Draw(t, "kind") {
	case fsm.CmdRegisterNode:
		return &fsm.RegisterNode{Name: genNode.Draw(t, "node"), Address: "10.0.0.1"}
	case fsm.CmdDeregisterNode:
		return &fsm.DeregisterNode{Name: genNode.Draw(t, "node")}
	case fsm.CmdSetNodeStatus:
		return &fsm.SetNodeStatus{Name: genNode.Draw(t, "node"), Status: genNodeState.Draw(t, "state")}
	case fsm.CmdRegisterInstance:
		in := fsm.Instance{ID: genInstance.Draw(t, "id"), Name: genService.Draw(t, "service"), Node: genNode.Draw(t, "node"), Port: 80}
		ids := rapid.Permutation([]string{"k1", "k2", "k3"}).Draw(t, "check ids")
		for _, id := range ids[:uniform(0, 1, 2, 2).Draw(t, "checks")] {
			in.Checks = append(in.Checks, fsm.Check{ID: id, Type: uniform("ttl", "http").Draw(t, "type")})
		}
		if rapid.Bool().Draw(t, "leased") {
			in.Lease = lease()
		}
		return &fsm.RegisterInstance{Instance: in}
	case fsm.CmdDeregisterInstance:
		c := &fsm.DeregisterInstance{Node: genNode.Draw(t, "node"), ID: genInstance.Draw(t, "id")}
		if in := knownInstance(t, f); in != nil {
			c.Node, c.ID = in.Node, in.ID
		}
		return c
	case fsm.CmdUpdateCheck:
		c := &fsm.UpdateCheck{Node: genNode.Draw(t, "node"), CheckID: genCheckID.Draw(t, "check"), Status: genStatus.Draw(t, "status")}
		if in := knownInstance(t, f); in != nil && len(in.Checks) > 0 {
			c.Node, c.CheckID = in.Node, uniform(in.Checks...).Draw(t, "check").ID
		}
		return c
	case fsm.CmdGrantLease:
		id := genLease.Draw(t, "lease")
		if rapid.IntRange(0, 3).Draw(t, "derived") == 0 {
			id = ""
		}
		return &fsm.GrantLease{ID: id, TTL: genTTL.Draw(t, "ttl")}
	case fsm.CmdRevokeLease:
		return &fsm.RevokeLease{ID: lease(), Now: at}
	case fsm.CmdExpireLease:
		return &fsm.ExpireLease{ID: lease(), Now: at}
	case fsm.CmdAcquireLock:
		return &fsm.AcquireLock{Name: genLockName.Draw(t, "lock"), Lease: lease(), Value: genValue.Draw(t, "value"),
			Queue: rapid.IntRange(0, 2).Draw(t, "queue") > 0, LockDelay: genDelay.Draw(t, "delay"), Now: at}
	case fsm.CmdReleaseLock:
		name := genLockName.Draw(t, "lock")
		return &fsm.ReleaseLock{Name: name, Lease: actor(t, holdIDs(f.Lock(name)), genLease),
			OnlyWaiting: rapid.IntRange(0, 3).Draw(t, "only") == 0, Now: at}
	case fsm.CmdCampaign:
		return &fsm.Campaign{Election: genElection.Draw(t, "election"), Candidate: genCandidate.Draw(t, "candidate"),
			Lease: lease(), Value: genValue.Draw(t, "value"), Now: at}
	default:
		name := genElection.Draw(t, "election")
		return &fsm.Resign{Election: name, Candidate: actor(t, holdIDs(f.Election(name)), genCandidate),
			OnlyWaiting: rapid.IntRange(0, 3).Draw(t, "only") == 0, Now: at}
	}
}

var allKinds = []fsm.CommandType{
	fsm.CmdRegisterNode, fsm.CmdDeregisterNode, fsm.CmdSetNodeStatus,
	fsm.CmdRegisterInstance, fsm.CmdRegisterInstance, fsm.CmdDeregisterInstance, fsm.CmdUpdateCheck, fsm.CmdUpdateCheck,
	fsm.CmdGrantLease, fsm.CmdGrantLease, fsm.CmdGrantLease, fsm.CmdRevokeLease, fsm.CmdExpireLease,
	fsm.CmdAcquireLock, fsm.CmdAcquireLock, fsm.CmdAcquireLock, fsm.CmdReleaseLock, fsm.CmdReleaseLock,
	fsm.CmdCampaign, fsm.CmdCampaign, fsm.CmdCampaign, fsm.CmdResign, fsm.CmdResign,
}

var mutexKinds = []fsm.CommandType{
	fsm.CmdGrantLease, fsm.CmdGrantLease, fsm.CmdRevokeLease, fsm.CmdExpireLease,
	fsm.CmdAcquireLock, fsm.CmdAcquireLock, fsm.CmdReleaseLock,
	fsm.CmdCampaign, fsm.CmdCampaign, fsm.CmdResign,
}

// prelude starts every generated log, so that most commands find the nodes
// and leases they name.
var prelude = []fsm.Command{regNode("n1"), grant("l1"), grant("l2"), regNode("n2")}

// genLog draws a log: the prelude, then commands over kinds, some invalid,
// at increasing indexes with gaps. No entry fails to decode: leaders
// commit none, and one halts the registry (TestFSM_ApplyBytes_undecodable).
func genLog(kinds []fsm.CommandType) *rapid.Generator[[]entry] {
	return rapid.Custom(func(t *rapid.T) []entry {
		n := rapid.IntRange(1, 200).Draw(t, "entries")
		now, index := t0, uint64(0)
		log := make([]entry, 0, len(prelude)+n)
		model := fsm.New() // the registry the log builds, to steer the draws
		for _, c := range prelude {
			index++
			b, _ := fsm.Encode(c)
			model.ApplyBytes(index, b)
			log = append(log, entry{index: index, data: b, cmd: c})
		}
		for range n {
			now += genTick.Draw(t, "tick")
			index += uint64(rapid.IntRange(1, 2).Draw(t, "gap"))
			c := genCommand(t, model, now, kinds)
			if rapid.IntRange(0, 9).Draw(t, "invalid") == 0 {
				invalidate(c)
			}
			b, err := fsm.Encode(c)
			if err != nil {
				t.Fatalf("encode %+v: %v", c, err)
			}
			model.ApplyBytes(index, b)
			log = append(log, entry{index: index, data: b, cmd: c})
		}
		return log
	})
}

func applyLog(f *fsm.FSM, log []entry) []*fsm.Result {
	out := make([]*fsm.Result, len(log))
	for i, e := range log {
		out[i] = f.ApplyBytes(e.index, e.data)
	}
	return out
}

// sameResult compares what two replicas answered for one entry.
func sameResult(a, b *fsm.Result) bool {
	errText := func(r *fsm.Result) string {
		if r.Err == nil {
			return ""
		}
		return r.Err.Error()
	}
	return a.Index == b.Index && a.Held == b.Held && a.Token == b.Token && a.LeaseID == b.LeaseID &&
		reflect.DeepEqual(a.Holder, b.Holder) && errText(a) == errText(b)
}

// Property (a): the registry is a function of its log.
func TestFSM_ApplyBytes_deterministic(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := genLog(allKinds).Draw(t, "log")
		a, b := fsm.New(), fsm.New()
		ra, rb := applyLog(a, log), applyLog(b, log)
		for i := range log {
			if !sameResult(ra[i], rb[i]) {
				t.Fatalf("entry %v: results differ: %+v vs %+v", log[i], ra[i], rb[i])
			}
		}
		if a.Digest() != b.Digest() {
			t.Fatal("replicas of one log have different digests")
		}
		var sa, sb bytes.Buffer
		if err := a.WriteSnapshot(&sa); err != nil {
			t.Fatal(err)
		}
		if err := b.WriteSnapshot(&sb); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sa.Bytes(), sb.Bytes()) {
			t.Fatal("replicas of one log write different snapshots")
		}
	})
}

// Property (b): a replica restored from a snapshot taken anywhere in the
// log and fed the rest ends where one that never snapshotted does.
func TestFSM_Restore_continuesLikeOriginal(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := genLog(allKinds).Draw(t, "log")
		cut := rapid.IntRange(0, len(log)).Draw(t, "cut")
		viaRaft := rapid.Bool().Draw(t, "via raft")

		whole := fsm.New()
		want := applyLog(whole, log)

		first := fsm.New()
		applyLog(first, log[:cut])
		var snap []byte
		if viaRaft {
			s, err := first.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			sink := &fakeSink{}
			if err := s.Persist(sink); err != nil {
				t.Fatal(err)
			}
			s.Release()
			snap = sink.Bytes()
		} else {
			var buf bytes.Buffer
			if err := first.WriteSnapshot(&buf); err != nil {
				t.Fatal(err)
			}
			snap = buf.Bytes()
		}
		restored := fsm.New()
		if err := restored.Restore(nopCloser(snap)); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		if restored.Digest() != first.Digest() || restored.Index() != first.Index() {
			t.Fatal("restored registry differs from the one snapshotted")
		}
		got := applyLog(restored, log[cut:])
		for i := range got {
			if !sameResult(got[i], want[cut+i]) {
				t.Fatalf("entry %v after restore: %+v, without restore: %+v", log[cut+i], got[i], want[cut+i])
			}
		}
		if restored.Digest() != whole.Digest() {
			t.Fatal("snapshot and restore changed where the log leads")
		}
		if g, w := viewOf(restored), viewOf(whole); !reflect.DeepEqual(g, w) {
			t.Fatalf("views differ:\n%+v\n%+v", g, w)
		}
	})
}

// Property (c): invariants hold after every entry.
func TestFSM_ApplyBytes_invariants(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := genLog(allKinds).Draw(t, "log")
		f := fsm.New()
		tokens := newTokenTracker()
		for _, e := range log {
			before := f.Digest()
			r := f.ApplyBytes(e.index, e.data)
			if r.Err != nil && f.Digest() != before {
				t.Fatalf("entry %v failed (%v) but changed the registry", e, r.Err)
			}
			checkInvariants(t, f)
			tokens.observe(t, f)
			checkResult(t, f, e, r)
		}
	})
}

// Fencing tokens only ever grow, whatever ends a hold: a property over
// traffic of locks, elections and leases only.
func TestMutex_Token_increases(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := genLog(mutexKinds).Draw(t, "log")
		f := fsm.New()
		tokens := newTokenTracker()
		for _, e := range log {
			r := f.ApplyBytes(e.index, e.data)
			tokens.observe(t, f)
			checkResult(t, f, e, r)
			if r.Held && r.Err == nil && r.Token > e.index {
				t.Fatalf("entry %v: token %d above the entry's index", e, r.Token)
			}
		}
	})
}

// checkResult checks that what a lock or election command answers is what
// the registry then holds.
func checkResult(t *rapid.T, f *fsm.FSM, e entry, r *fsm.Result) {
	t.Helper()
	if r.Err != nil {
		return
	}
	var m *fsm.Mutex
	var id string
	switch c := e.cmd.(type) {
	case *fsm.AcquireLock:
		m, _ = f.Lock(c.Name)
		id = c.Lease
	case *fsm.ReleaseLock:
		m, _ = f.Lock(c.Name)
		id = c.Lease
	case *fsm.Campaign:
		m, _ = f.Election(c.Election)
		id = c.Candidate
	case *fsm.Resign:
		m, _ = f.Election(c.Election)
		id = c.Candidate
	default:
		return
	}
	if m == nil {
		if r.Held || r.Holder != nil {
			t.Fatalf("entry %v: result %+v for a mutex that does not exist", e, r)
		}
		return
	}
	if !reflect.DeepEqual(r.Holder, m.Holder) {
		t.Fatalf("entry %v: result holder %+v, mutex holder %+v", e, r.Holder, m.Holder)
	}
	if held := m.Holder != nil && m.Holder.ID == id; r.Held != held || held && r.Token != m.Holder.Token {
		t.Fatalf("entry %v: result held %v token %d, mutex holder %+v", e, r.Held, r.Token, m.Holder)
	}
}
