package election_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/election/electiontest"
	"github.com/sidecarhq/sidecar/fsm"
)

// aclWorld is a TCP cluster whose servers check tokens, a management token
// and tokens A and B that may use leases, locks and elections, and a
// client sidecar writing through a follower (so every write is forwarded).
type aclWorld struct {
	leader, follower *election.Server
	remote           *election.Remote
	client           *election.Local
	mgmt, a, b       *acl.Caller
}

const aclRules = `{"lease":"write","lock":"write","election":"write"}`

func newACLWorld(t *testing.T) *aclWorld {
	t.Helper()
	servers := tcpCluster(t, 3)
	w := &aclWorld{}
	for _, s := range servers {
		s.SetACL(acl.NewResolver(s.FSM(), acl.Allow))
		if s.IsLeader() {
			w.leader = s
		} else if w.follower == nil {
			w.follower = s
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range []fsm.Command{
		&fsm.ACLBootstrap{Token: fsm.ACLToken{ID: "t-mgmt", SecretHash: acl.HashSecret("secret-mgmt"), Management: true}},
		&fsm.ACLSetToken{Token: fsm.ACLToken{ID: "t-a", SecretHash: acl.HashSecret("secret-a"), Rules: []byte(aclRules)}, Create: true},
		&fsm.ACLSetToken{Token: fsm.ACLToken{ID: "t-b", SecretHash: acl.HashSecret("secret-b"), Rules: []byte(aclRules)}, Create: true},
	} {
		res, err := w.leader.Apply(ctx, c)
		if err != nil {
			t.Fatalf("set up tokens: %v", err)
		}
		waitFor(t, 10*time.Second, "the follower to learn the tokens", func() bool { return w.follower.FSM().Index() >= res.Index })
	}
	r := acl.NewResolver(w.leader.FSM(), acl.Allow)
	for _, c := range []struct {
		into   **acl.Caller
		secret string
	}{{&w.mgmt, "secret-mgmt"}, {&w.a, "secret-a"}, {&w.b, "secret-b"}} {
		caller, err := r.Resolve(c.secret)
		if err != nil {
			t.Fatal(err)
		}
		*c.into = caller
	}
	w.remote = election.NewRemote(nil, func() []string { return []string{string(w.follower.Addr())} })
	t.Cleanup(w.remote.Close)
	w.client = newLocal(t, "client-1", w.remote, w.follower.FSM())
	if err := w.client.Start(ctx); err != nil {
		t.Fatalf("client node session: %v", err)
	}
	return w
}

// as is a context acting for c, ending with the test.
func as(t *testing.T, c *acl.Caller) context.Context {
	return acl.NewContext(t.Context(), c)
}

// refused runs a write that must be refused with want, and checks the
// leader's registry did not change.
func (w *aclWorld) refused(t *testing.T, what string, want error, do func() error) {
	t.Helper()
	before, idx := w.leader.FSM().Digest(), w.leader.FSM().Index()
	err := do()
	if !errors.Is(err, want) {
		t.Fatalf("%s: err = %v, want %v", what, err, want)
	}
	if after := w.leader.FSM().Digest(); after != before {
		t.Fatalf("%s changed the registry (index %d -> %d)", what, idx, w.leader.FSM().Index())
	}
}

// A client cannot act for a token it does not hold the secret of: the
// leader checks the forwarded token against the command.
func TestACL_forwardedWriteNeedsItsToken(t *testing.T) {
	w := newACLWorld(t)
	la, err := w.client.GrantLease(as(t, w.a), 10*time.Second)
	if err != nil {
		t.Fatalf("A grants a lease: %v", err)
	}
	if l, ok := w.leader.FSM().Lease(la); !ok || l.Owner != "t-a" {
		t.Fatalf("A's lease %+v %v", l, ok)
	}
	lockAsA := &fsm.AcquireLock{Name: "job", Lease: la, Node: "client-1", Now: time.Now().UnixNano(), Auth: fsm.Auth{By: "t-a"}}
	w.refused(t, "a write claiming A without a token", election.ErrPermissionDenied, func() error {
		_, err := w.remote.Apply(context.Background(), lockAsA)
		return err
	})
	w.refused(t, "a write claiming A with B's token", election.ErrPermissionDenied, func() error {
		_, err := w.remote.Apply(as(t, w.b), lockAsA)
		return err
	})
	w.refused(t, "a lease granted for A with B's token", election.ErrPermissionDenied, func() error {
		_, err := w.remote.Apply(as(t, w.b), &fsm.GrantLease{TTL: int64(10 * time.Second), Owner: "t-a"})
		return err
	})
	forged := &acl.Caller{Secret: "not-a-secret", TokenID: "t-a"}
	w.refused(t, "an unknown secret", election.ErrPermissionDenied, func() error {
		_, err := w.remote.Apply(as(t, forged), lockAsA)
		return err
	})
	w.refused(t, "a keepalive with an unknown secret", election.ErrPermissionDenied, func() error {
		_, err := w.remote.KeepAlive(as(t, forged), la)
		return err
	})
	w.refused(t, "a token set without a token", election.ErrPermissionDenied, func() error {
		_, err := w.remote.Apply(context.Background(), &fsm.ACLSetToken{Token: fsm.ACLToken{ID: "t-evil", SecretHash: "x", Management: true}})
		return err
	})
	// With its own token, the same write goes through.
	if _, err := w.remote.Apply(as(t, w.a), lockAsA); err != nil {
		t.Fatalf("A locks on its lease: %v", err)
	}
}

// Token B cannot keep alive, revoke, lock on, unlock or resign what token
// A created; a management token may.
func TestACL_ownershipOfLeasesAndCandidates(t *testing.T) {
	w := newACLWorld(t)
	ctxA, ctxB, ctxM := as(t, w.a), as(t, w.b), as(t, w.mgmt)
	la, err := w.client.GrantLease(ctxA, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := w.client.Lock(ctxA, election.LockSpec{Name: "job", Lease: la}); err != nil || !res.Held {
		t.Fatalf("A locks: %+v %v", res, err)
	}
	if _, err := w.client.Campaign(ctxA, election.CampaignSpec{Election: "db", Candidate: "a-1", Lease: la}); err != nil {
		t.Fatalf("A campaigns on its lease: %v", err)
	}
	// A candidate on the node session is A's too.
	if _, err := w.client.Campaign(ctxA, election.CampaignSpec{Election: "web", Candidate: "a-2"}); err != nil {
		t.Fatalf("A campaigns on the node session: %v", err)
	}

	for _, ctx := range []struct {
		who string
		ctx context.Context
	}{{"B", ctxB}, {"no token", context.Background()}} {
		w.refused(t, ctx.who+"'s keepalive of A's lease", fsm.ErrNotOwner, func() error {
			_, err := w.client.KeepAlive(ctx.ctx, la)
			return err
		})
		w.refused(t, ctx.who+"'s keepalive of A's lease, straight to a server", fsm.ErrNotOwner, func() error {
			_, err := w.remote.KeepAlive(ctx.ctx, la)
			return err
		})
		w.refused(t, ctx.who+"'s revoke of A's lease", fsm.ErrNotOwner, func() error {
			return w.client.RevokeLease(ctx.ctx, la)
		})
		w.refused(t, ctx.who+"'s lock on A's lease", fsm.ErrNotOwner, func() error {
			_, err := w.client.Lock(ctx.ctx, election.LockSpec{Name: "other", Lease: la})
			return err
		})
		w.refused(t, ctx.who+"'s unlock of A's lock", fsm.ErrNotOwner, func() error {
			return w.client.Unlock(ctx.ctx, "job", la)
		})
		w.refused(t, ctx.who+"'s campaign on A's lease", fsm.ErrNotOwner, func() error {
			_, err := w.client.Campaign(ctx.ctx, election.CampaignSpec{Election: "db", Candidate: "b-1", Lease: la})
			return err
		})
		w.refused(t, ctx.who+"'s resign of A's candidate", fsm.ErrNotOwner, func() error {
			return w.client.Resign(ctx.ctx, "db", "a-1")
		})
		w.refused(t, ctx.who+"'s resign of A's candidate on the node session", fsm.ErrNotOwner, func() error {
			return w.client.Resign(ctx.ctx, "web", "a-2")
		})
	}
	// B cannot use the node session of another node either.
	w.refused(t, "B's lock on the client's node session from another sidecar", fsm.ErrNotOwner, func() error {
		other := newLocal(t, "client-2", w.remote, w.follower.FSM())
		_, err := other.Lock(ctxB, election.LockSpec{Name: "other", Lease: w.client.NodeSession().ID()})
		return err
	})

	// A node session is kept alive by its node, which sends no token; a
	// token other than management's may not (the refusal names it).
	session := w.client.NodeSession().ID()
	w.refused(t, "B's keepalive of the client's node session", fsm.ErrNotOwner, func() error {
		_, err := w.remote.KeepAlive(ctxB, session)
		if err != nil && !strings.Contains(err.Error(), `token "t-b"`) {
			t.Errorf("the refusal does not name token t-b: %v", err)
		}
		return err
	})
	if _, err := w.remote.KeepAlive(context.Background(), session); err != nil {
		t.Fatalf("the node session's keepalive without a token: %v", err)
	}

	// None of the refusals made this sidecar doubt A's lease.
	if d, ok := w.client.LeaseRemaining(la); !ok || d <= 0 {
		t.Fatalf("A's lease remaining %v %v after refused attempts on it", d, ok)
	}

	// A may; management may.
	if _, err := w.client.KeepAlive(ctxA, la); err != nil {
		t.Fatalf("A's keepalive: %v", err)
	}
	if _, err := w.client.KeepAlive(ctxM, la); err != nil {
		t.Fatalf("management's keepalive: %v", err)
	}
	if err := w.client.Resign(ctxA, "web", "a-2"); err != nil {
		t.Fatalf("A resigns: %v", err)
	}
	if err := w.client.Resign(ctxM, "db", "a-1"); err != nil {
		t.Fatalf("management resigns A's candidate: %v", err)
	}
	if err := w.client.Unlock(ctxM, "job", la); err != nil {
		t.Fatalf("management unlocks: %v", err)
	}
	if err := w.client.RevokeLease(ctxM, la); err != nil {
		t.Fatalf("management revokes: %v", err)
	}
	if _, ok := w.leader.FSM().Lease(la); ok {
		t.Fatal("lease still there after management's revoke")
	}
}

// The sidecar's own work goes on under tokens: a connection-bound hold
// made with A's token stays alive past its TTL and ends with its
// connection, and Close releases what A took on the node session.
func TestACL_sidecarCleanupUnderToken(t *testing.T) {
	w := newACLWorld(t)
	ctxA := as(t, w.a)

	hctx, stop := context.WithCancel(ctxA)
	defer stop()
	held := make(chan api.LockResult, 1)
	done := make(chan error, 1)
	go func() {
		done <- w.client.HoldLock(hctx, election.LockSpec{Name: "hold"}, time.Second, func(r api.LockResult) error {
			if r.Held {
				select {
				case held <- r:
				default:
				}
			}
			return nil
		})
	}()
	var lease string
	select {
	case r := <-held:
		lease = r.Lease
	case err := <-done:
		t.Fatalf("hold ended before it held: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("hold not held")
	}
	if l, ok := w.leader.FSM().Lease(lease); !ok || l.Owner != "t-a" {
		t.Fatalf("hold session %+v %v, want A's", l, ok)
	}
	// Its keepalives go with A's token: it outlives its TTL twice over.
	end := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(end) {
		if m, ok := w.leader.FSM().Lock("hold"); !ok || m.Holder == nil || m.Holder.ID != lease {
			t.Fatalf("hold lost after %v", time.Until(end))
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("hold: %v", err)
	}
	waitFor(t, 10*time.Second, "the hold's session revoked", func() bool {
		_, ok := w.leader.FSM().Lease(lease)
		return !ok
	})

	// Node-session holds taken with A's token end with Close.
	if _, err := w.client.Campaign(ctxA, election.CampaignSpec{Election: "db", Candidate: "a-1"}); err != nil {
		t.Fatal(err)
	}
	if res, err := w.client.Lock(ctxA, election.LockSpec{Name: "job"}); err != nil || !res.Held {
		t.Fatalf("lock: %+v %v", res, err)
	}
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.client.Close(cctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitFor(t, 10*time.Second, "Close to release everything", func() bool {
		e, _ := w.leader.FSM().Election("db")
		m, _ := w.leader.FSM().Lock("job")
		return (e == nil || e.Holder == nil) && (m == nil || m.Holder == nil)
	})
}

// Without a resolver the servers check no tokens, as before ACLs.
func TestACL_noResolverChecksNothing(t *testing.T) {
	c := electiontest.NewCluster(t, 1, nil)
	ctx := as(t, &acl.Caller{Secret: "whatever", TokenID: "t-x"})
	res, err := c.Servers[0].Apply(ctx, &fsm.GrantLease{TTL: int64(10 * time.Second), Owner: "t-x"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Servers[0].KeepAlive(context.Background(), res.LeaseID); err != nil {
		t.Fatalf("keepalive by the sidecar itself: %v", err)
	}
}
