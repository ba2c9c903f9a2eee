package election_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/election/electiontest"
	"github.com/sidecarhq/sidecar/fsm"
)

func newLocal(t *testing.T, node string, b election.Backend, reg *fsm.FSM) *election.Local {
	t.Helper()
	l := election.NewLocal(election.LocalConfig{Node: node, SessionTTL: 2 * time.Second, Logger: electiontest.Logger(t, node)}, b, reg)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		l.Close(ctx)
	})
	return l
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !pollUntil(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// pollUntil polls cond until it holds (true) or timeout passes (false).
func pollUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// holderLog records, from one replica's registry, every holder a lock had,
// with the time it was first seen.
type holderLog struct {
	mu      sync.Mutex
	holders []fsm.Holder
}

func (h *holderLog) watch(ctx context.Context, reg *fsm.FSM, lock string) {
	var last uint64
	for {
		ch := reg.Watch()
		if m, ok := reg.Lock(lock); ok && m.Holder != nil && m.Holder.Token != last {
			last = m.Holder.Token
			h.mu.Lock()
			h.holders = append(h.holders, *m.Holder)
			h.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

func (h *holderLog) list() []fsm.Holder {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]fsm.Holder(nil), h.holders...)
}

// The acceptance test of leases across a Raft leader change: leases live
// their full TTL again under the new leader, a lock held by a live lease is
// never handed to a second holder, and tokens keep increasing.
func TestCluster_LeaderChange_leasesLocksTokens(t *testing.T) {
	c := electiontest.NewCluster(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	backend := c.Backend()

	// Two sidecars: A holds the lock and leads the election, B waits.
	regA := c.Servers[1].FSM()
	a := newLocal(t, "node-a", backend, regA)
	b := newLocal(t, "node-b", backend, c.Servers[2].FSM())
	sessA, err := a.NewSession(ctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	sessB, err := b.NewSession(ctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// An idle lease nobody keeps alive, to watch its expiry.
	const idleTTL = 1500 * time.Millisecond
	idle, err := backend.Apply(ctx, &fsm.GrantLease{TTL: int64(idleTTL)})
	if err != nil {
		t.Fatal(err)
	}

	var tokensBefore []uint64
	lockA, err := a.Lock(ctx, election.LockSpec{Name: "db", Lease: sessA.ID()})
	if err != nil || !lockA.Held {
		t.Fatalf("A lock: %+v, %v", lockA, err)
	}
	tokensBefore = append(tokensBefore, lockA.Token)
	campA, err := a.Campaign(ctx, election.CampaignSpec{Election: "primary", Candidate: "a", Value: "10.0.0.1:80", Lease: sessA.ID()})
	if err != nil || !campA.Leader {
		t.Fatalf("A campaign: %+v, %v", campA, err)
	}
	tokensBefore = append(tokensBefore, campA.Token)
	if _, err := b.Campaign(ctx, election.CampaignSpec{Election: "primary", Candidate: "b", Value: "10.0.0.2:80", Lease: sessB.ID()}); err != nil {
		t.Fatal(err)
	}

	// Every replica that survives records the lock's holders.
	var logs []*holderLog
	watchCtx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopWatch(); wg.Wait() }()
	for _, s := range c.Servers {
		hl := &holderLog{}
		logs = append(logs, hl)
		wg.Add(1)
		go func(reg *fsm.FSM) { defer wg.Done(); hl.watch(watchCtx, reg, "db") }(s.FSM())
	}
	// B queues for the lock for the whole test.
	lockB := make(chan error, 1)
	var resB struct {
		sync.Mutex
		res election.LockSpec
		got bool
		tok uint64
	}
	go func() {
		r, err := b.Lock(ctx, election.LockSpec{Name: "db", Lease: sessB.ID(), Wait: 20 * time.Second})
		resB.Lock()
		resB.got, resB.tok = r.Held, r.Token
		resB.Unlock()
		lockB <- err
	}()
	waitFor(t, 5*time.Second, "B in line", func() bool {
		m, ok := regA.Lock("db")
		return ok && m.WaiterIndex(sessB.ID()) == 0
	})

	// Kill the leader.
	old := c.Leader()
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	var newLeader *election.Server
	waitFor(t, 10*time.Second, "a new leader", func() bool {
		newLeader = c.Leader()
		return newLeader != nil
	})
	gained := time.Now()

	// The idle lease lives at least its full TTL under the new leader.
	waitFor(t, 10*time.Second, "idle lease expiry", func() bool {
		_, ok := newLeader.FSM().Lease(idle.LeaseID)
		return !ok
	})
	lived := time.Since(gained)
	if lived < idleTTL-10*time.Millisecond {
		t.Fatalf("idle lease expired %v after the new leader took over; want at least its TTL %v", lived, idleTTL)
	}
	// No hidden multiplier: it goes about one TTL later (the bound is loose
	// for a loaded machine, tight enough to catch a doubled TTL).
	if lived > 2*idleTTL {
		t.Fatalf("idle lease lived %v under the new leader, over twice its TTL %v", lived, idleTTL)
	}
	// A kept its lease alive through the change: it still holds the lock
	// and leads, and B got nothing.
	if m, _ := newLeader.FSM().Lock("db"); m.Holder == nil || m.Holder.Lease != sessA.ID() || m.Holder.Token != lockA.Token {
		t.Fatalf("lock holder after leader change = %+v, want A with token %d", m.Holder, lockA.Token)
	}
	if st := a.Self("primary"); !st.Leader || st.Token != campA.Token {
		t.Fatalf("A self after leader change = %+v", st)
	}

	// A gives up; B gets lock and leadership with greater tokens.
	if err := a.Unlock(ctx, "db", sessA.ID()); err != nil {
		t.Fatal(err)
	}
	if err := <-lockB; err != nil {
		t.Fatal(err)
	}
	resB.Lock()
	gotB, tokB := resB.got, resB.tok
	resB.Unlock()
	if !gotB {
		t.Fatal("B did not get the lock after A released it")
	}
	if err := a.Resign(ctx, "primary", "a"); err != nil {
		t.Fatal(err)
	}
	var campB fsm.Holder
	waitFor(t, 5*time.Second, "B leads", func() bool {
		m, ok := newLeader.FSM().Election("primary")
		if ok && m.Holder != nil && m.Holder.ID == "b" {
			campB = *m.Holder
			return true
		}
		return false
	})
	for _, before := range tokensBefore {
		for _, after := range []uint64{tokB, campB.Token} {
			if after <= before {
				t.Fatalf("token %d after the leader change is not greater than token %d before it", after, before)
			}
		}
	}
	// On every replica the lock went from A straight to B, never to a
	// second holder while A's lease lived.
	for i, hl := range logs {
		if c.Servers[i] == old {
			continue
		}
		// B's grant was answered from B's own replica; the others (and
		// the watchers that record them) may apply it a little later.
		var hs []fsm.Holder
		ok := pollUntil(5*time.Second, func() bool {
			hs = hl.list()
			return len(hs) > 0 && hs[len(hs)-1].Lease == sessB.ID()
		})
		if !ok {
			t.Fatalf("replica %d: holders %+v, want ending with B", i, hs)
		}
		for j := 1; j < len(hs); j++ {
			if hs[j].Token <= hs[j-1].Token {
				t.Fatalf("replica %d: token went from %d to %d", i, hs[j-1].Token, hs[j].Token)
			}
			if hs[j-1].Lease == sessA.ID() && hs[j].Lease != sessA.ID() {
				// A's hold ended by its own release, after the change.
				if _, alive := c.Servers[i].FSM().Lease(sessA.ID()); !alive {
					t.Fatalf("replica %d: A's lease gone; it should have stayed live", i)
				}
			}
		}
	}
}
