package election_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/tlsutil"
)

// batchEntriesSeen reads a server's sidecar_rpc_apply_batch_entries: how
// many batches it received and how many writes they held.
func batchEntriesSeen(t *testing.T, reg *prometheus.Registry) (batches, writes uint64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "sidecar_rpc_apply_batch_entries" {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), uint64(h.GetSampleSum())
		}
	}
	return 0, 0
}

// Concurrent writes of a client share RPC requests, and each caller still
// gets its own answer: its own index for a write that lands, its own error
// for one the registry refuses, and nothing else lands.
func TestRemote_concurrentWritesShareRequestsAndKeepTheirAnswers(t *testing.T) {
	regs := map[string]*prometheus.Registry{}
	servers := tcpClusterWith(t, 3, func(c *election.ServerConfig) {
		r := prometheus.NewRegistry()
		regs[c.Node] = r
		c.Registerer = r
		// The agent's timings: 640 writes at once on a loaded machine
		// must not cost the tests' short leader lease.
		d := election.DefaultServerConfig()
		c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = d.HeartbeatTimeout, d.ElectionTimeout, d.LeaderLeaseTimeout
	})
	var leader, follower *election.Server
	var followerReg *prometheus.Registry
	for i, s := range servers {
		if s.IsLeader() {
			leader = s
		} else if follower == nil {
			follower, followerReg = s, regs[fmt.Sprintf("s%d", i)]
		}
	}
	remote := election.NewRemote(nil, func() []string { return []string{string(follower.Addr())} })
	defer remote.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := remote.Apply(ctx, &fsm.RegisterNode{Name: "c1", Address: "10.0.0.9"}); err != nil {
		t.Fatal(err)
	}
	const writers, each = 64, 10
	landed := map[uint64]string{}
	var want []string
	for round := 0; ; round++ {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				for k := range each {
					id := fmt.Sprintf("i-%d-%d-%d", round, w, k)
					var cmd fsm.Command = &fsm.RegisterInstance{Instance: fsm.Instance{ID: id, Name: "web", Node: "c1", Address: "10.0.0.9", Port: 1 + k}}
					refused := (w+k)%4 == 0
					if refused {
						cmd = &fsm.DeregisterInstance{Node: "c1", ID: "never-" + id}
					}
					res, err := remote.Apply(ctx, cmd)
					mu.Lock()
					switch {
					case refused && !errors.Is(err, fsm.ErrUnknownInstance):
						t.Errorf("deregistering an unknown instance: %v, want ErrUnknownInstance", err)
					case !refused && err != nil:
						t.Errorf("register %s: %v", id, err)
					case !refused && landed[res.Index] != "":
						t.Errorf("%s and %s answered with one index %d", id, landed[res.Index], res.Index)
					case !refused:
						landed[res.Index] = id
						want = append(want, id)
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		// Whether writes meet in one request depends on the scheduler:
		// another round until one batch held more than one.
		if batches, writes := batchEntriesSeen(t, followerReg); writes > batches {
			t.Logf("the follower received %d writes in %d batches", writes, batches)
			break
		}
		if round == 9 {
			t.Fatal("64 concurrent writers never shared a request in 10 rounds")
		}
	}
	waitFor(t, 10*time.Second, "the leader to hold every write", func() bool {
		return len(leader.FSM().ServiceInstances("web")) == len(want)
	})
	for _, id := range want {
		if _, ok := leader.FSM().Instance("c1", id); !ok {
			t.Fatalf("acknowledged %s is not in the registry", id)
		}
	}
}

// Each write in a batch is judged by its own token, through a follower and
// at the leader: a write without the right token rides in no other's.
func TestRemote_batchEntryNeedsItsOwnToken(t *testing.T) {
	w := newACLWorld(t)
	la, err := w.client.GrantLease(as(t, w.a), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lock := func(name string) *fsm.AcquireLock {
		return &fsm.AcquireLock{Name: name, Lease: la, Node: "client-1", Now: time.Now().UnixNano(), Auth: fsm.Auth{By: "t-a"}}
	}
	for _, at := range []struct {
		name string
		s    *election.Server
	}{{"follower", w.follower}, {"leader", w.leader}} {
		to := at.s
		before := to.FSM().Index()
		res, errs, err := w.remote.SendBatch(t.Context(), string(to.Addr()), []election.BatchEntry{
			{Secret: "secret-b", Cmd: lock("b-" + at.name)},
			{Secret: "secret-a", Cmd: lock("a-" + at.name)},
			{Secret: "", Cmd: lock("none-" + at.name)},
			{Secret: "not-a-secret", Cmd: lock("forged-" + at.name)},
		})
		if err != nil {
			t.Fatalf("batch to %s: %v", at.name, err)
		}
		if errs[1] != nil || !res[1].Held {
			t.Fatalf("A's own write in the batch to %s: %+v %v", at.name, res[1], errs[1])
		}
		for _, i := range []int{0, 2, 3} {
			if !errors.Is(errs[i], election.ErrPermissionDenied) {
				t.Errorf("batch to %s, entry %d claiming A without its token: %v, want permission denied", at.name, i, errs[i])
			}
		}
		waitFor(t, 10*time.Second, "the leader to apply", func() bool { return w.leader.FSM().Index() >= res[1].Index })
		for _, name := range []string{"b-", "none-", "forged-"} {
			if _, ok := w.leader.FSM().Lock(name + at.name); ok {
				t.Errorf("lock %s%s taken by a write without A's token", name, at.name)
			}
		}
		if got := w.leader.FSM().Index(); got != res[1].Index || res[1].Index <= before {
			t.Errorf("index %d after the batch, want %d: one write landed", got, res[1].Index)
		}
	}
}

// A client certificate's batch is checked entry by entry at its first hop:
// a follower passing it on to the leader (where the follower's own
// certificate arrives) does not launder a write for another node.
func TestRemote_TLS_batchThroughAFollowerWritesForItsOwnNodeOnly(t *testing.T) {
	p := newPKI(t)
	s1 := startTCPServer(t, "s1", p.loader(t, tlsutil.RoleServer, "s1"), true)
	waitFor(t, 10*time.Second, "s1 to lead", s1.IsLeader)
	s2 := startTCPServer(t, "s2", p.loader(t, tlsutil.RoleServer, "s2"), false)
	if err := s1.Raft().AddVoter("s2", s2.Addr(), 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	c1 := election.NewRemote(nil, func() []string { return []string{string(s2.Addr())} })
	c1.UseTLS(p.loader(t, tlsutil.RoleClient, "c1"))
	defer c1.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Through whichever server leads: two servers with the test's timings
	// may trade leadership on a loaded machine (a node entry is written
	// again harmlessly).
	admin := election.NewRemote(s2, nil)
	defer admin.Close()
	for _, n := range []string{"c1", "c2"} {
		waitFor(t, 10*time.Second, "node "+n+" registered", func() bool {
			_, err := admin.Apply(ctx, &fsm.RegisterNode{Name: n, Address: "10.0.0.1"})
			return err == nil
		})
	}
	inst := func(id, node string) fsm.Command {
		return &fsm.RegisterInstance{Instance: fsm.Instance{ID: id, Name: "web", Node: node, Address: "10.0.0.1", Port: 80}}
	}
	var (
		res  []*fsm.Result
		errs []error
	)
	// The follower may not know the leader yet: a batch it cannot pass on
	// is refused as a whole with "no leader", and sent again.
	waitFor(t, 10*time.Second, "the batch through s2", func() bool {
		var err error
		res, errs, err = c1.SendBatch(ctx, string(s2.Addr()), []election.BatchEntry{
			{Cmd: inst("pwn", "c2")},
			{Cmd: inst("web-1", "c1")},
			{Cmd: &fsm.SetNodeStatus{Name: "s1", Status: "failed"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		return !errors.Is(errs[1], election.ErrNotLeader)
	})
	if errs[1] != nil {
		t.Fatalf("c1 registering on its own node in a batch: %v", errs[1])
	}
	for _, i := range []int{0, 2} {
		if !errors.Is(errs[i], election.ErrPermissionDenied) {
			t.Errorf("entry %d of c1's batch: %v, want permission denied", i, errs[i])
		}
	}
	waitFor(t, 10*time.Second, "s1 to apply", func() bool { return s1.FSM().Index() >= res[1].Index })
	if _, ok := s1.FSM().Instance("c2", "pwn"); ok {
		t.Fatal("a client certificate registered an instance on another node through a follower's batch")
	}
}

// A batch that is too big or malformed is refused whole with a 4xx and
// changes nothing.
func TestRemote_malformedOrOversizedBatchIsRefused(t *testing.T) {
	servers := tcpCluster(t, 1)
	remote := election.NewRemote(nil, func() []string { return []string{string(servers[0].Addr())} })
	defer remote.Close()
	if _, err := remote.Apply(t.Context(), &fsm.RegisterNode{Name: "c1", Address: "10.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	index := servers[0].FSM().Index()
	oneEntry := func(n int) []byte {
		data := make([]byte, n)
		body := []byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
		return append(body, data...)
	}
	for _, c := range []struct {
		what string
		body []byte
		want int
	}{
		{"no entries", []byte{0, 0, 0, 0}, http.StatusBadRequest},
		{"an entry cut short", []byte{0, 0, 0, 1, 0, 0}, http.StatusBadRequest},
		{"one byte over the limit", oneEntry(election.MaxBatchBody + 1 - 14), http.StatusRequestEntityTooLarge},
		// As large as a batch may be, but its entry exceeds an entry's
		// limit: read, then refused as malformed, not as too large.
		{"malformed at the limit", oneEntry(election.MaxBatchBody - 14), http.StatusBadRequest},
	} {
		status, err := remote.PostBatch(t.Context(), string(servers[0].Addr()), c.body)
		if err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		if status != c.want {
			t.Errorf("%s: status %d, want %d", c.what, status, c.want)
		}
	}
	if got := servers[0].FSM().Index(); got != index {
		t.Fatalf("refused batches moved the index %d -> %d", index, got)
	}
}
