package election_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/election/electiontest"
	"github.com/sidecarhq/sidecar/fsm"
)

// errPass makes a hookBackend hook hand the call on to the real backend.
var errPass = errors.New("pass")

// hookBackend lets a test answer writes and read-index requests in place
// of the real backend (a ReadIndexer): a hook returning errPass hands the
// call on. Hooks are set before the backend is used.
type hookBackend struct {
	election.Backend
	apply     func(ctx context.Context, cmd fsm.Command) (*fsm.Result, error)
	readIndex func(ctx context.Context) (uint64, error)
}

func (b *hookBackend) Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error) {
	if b.apply != nil {
		if res, err := b.apply(ctx, cmd); !errors.Is(err, errPass) {
			return res, err
		}
	}
	return b.Backend.Apply(ctx, cmd)
}

func (b *hookBackend) ReadIndex(ctx context.Context) (uint64, error) {
	if b.readIndex != nil {
		if idx, err := b.readIndex(ctx); !errors.Is(err, errPass) {
			return idx, err
		}
	}
	return b.Backend.(election.ReadIndexer).ReadIndex(ctx)
}

// holderOfElection is the candidate leading an election on reg ("" for
// none).
func holderOfElection(reg *fsm.FSM, name string) string {
	m, ok := reg.Election(name)
	if !ok || m.Holder == nil {
		return ""
	}
	return m.Holder.ID
}

// A transfer the registry refuses (the successor left the line between
// the sidecar's check and the entry) leaves the old leader leading; the
// sidecar reports it as leader again at once when a quorum confirms its
// copy, and only once a quorum does: while none answers, it stays demoted
// (retrying every 100 ms), though the registry still shows it leading.
func TestLocal_Transfer_refusedLeadsAgainOnlyAfterAQuorumRead(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)

	b := newLocal(t, "node-b", c.Backend(), srv.FSM())
	var quorumDown atomic.Bool
	var failedReads atomic.Int32
	hb := &hookBackend{Backend: c.Backend()}
	hb.readIndex = func(context.Context) (uint64, error) {
		if quorumDown.Load() {
			failedReads.Add(1)
			return 0, errors.New("no quorum answers")
		}
		return 0, errPass
	}
	hb.apply = func(ctx context.Context, cmd fsm.Command) (*fsm.Result, error) {
		if tr, ok := cmd.(*fsm.Transfer); ok {
			// The successor resigns just before the transfer arrives.
			if err := b.Resign(ctx, tr.Election, tr.To); err != nil {
				return nil, err
			}
		}
		return nil, errPass
	}
	a := newLocal(t, "node-a", hb, srv.FSM())
	for _, l := range []*election.Local{a, b} {
		if err := l.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := a.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "a"}); err != nil || !r.Leader {
		t.Fatalf("campaign a: %+v %v", r, err)
	}
	token := a.Self("db").Token

	// A quorum answers: the refusal reinstates a before Transfer returns.
	if _, err := b.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Transfer(ctx, "db", "a", "b"); !errors.Is(err, fsm.ErrNotCandidate) {
		t.Fatalf("transfer to a candidate that left: %v, want ErrNotCandidate", err)
	}
	if st := a.Self("db"); !st.Leader || st.Token != token {
		t.Fatalf("after a refused transfer with a quorum: %+v, want leading with token %d", st, token)
	}

	// No quorum answers: a stays demoted until one does.
	if _, err := b.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "b"}); err != nil {
		t.Fatal(err)
	}
	quorumDown.Store(true)
	start := time.Now()
	if _, err := a.Transfer(ctx, "db", "a", "b"); !errors.Is(err, fsm.ErrNotCandidate) {
		t.Fatalf("transfer to a candidate that left: %v, want ErrNotCandidate", err)
	}
	if st := a.Self("db"); st.Leader {
		t.Fatalf("reported leading again without a quorum-confirmed read: %+v", st)
	}
	if h := holderOfElection(srv.FSM(), "db"); h != "a" {
		t.Fatalf("the refused transfer changed the leader to %q", h)
	}
	waitFor(t, 10*time.Second, "three failed quorum reads", func() bool { return failedReads.Load() >= 3 })
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("three quorum reads within %v: the retries do not wait 100 ms apart", d)
	}
	if st := a.Self("db"); st.Leader {
		t.Fatalf("reported leading while no quorum read succeeded: %+v", st)
	}
	quorumDown.Store(false)
	waitFor(t, 10*time.Second, "a reported leading again once a quorum answers", func() bool { return a.Self("db").Leader })
	if st := a.Self("db"); st.Token != token {
		t.Fatalf("leading again with token %d, want %d", st.Token, token)
	}
}

// A transfer whose outcome is unknown leaves the old leader demoted, and
// the sidecar resigns it, retrying 100 ms apart until the resign is known
// to have happened: the next candidate leads, the old one is no longer
// this sidecar's, and it may campaign and lead again afterwards.
func TestLocal_Transfer_unknownOutcomeResignsTheOldLeader(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)

	var mu sync.Mutex
	var resigns []time.Time // attempts to resign candidate a
	hb := &hookBackend{Backend: c.Backend()}
	hb.apply = func(_ context.Context, cmd fsm.Command) (*fsm.Result, error) {
		switch cmd := cmd.(type) {
		case *fsm.Transfer:
			return nil, fmt.Errorf("%w: connection reset", election.ErrUnknownOutcome)
		case *fsm.Resign:
			if cmd.Candidate == "a" {
				mu.Lock()
				defer mu.Unlock()
				resigns = append(resigns, time.Now())
				if len(resigns) <= 2 {
					return nil, fmt.Errorf("%w: connection reset", election.ErrUnknownOutcome)
				}
			}
		}
		return nil, errPass
	}
	a := newLocal(t, "node-a", hb, srv.FSM())
	b := newLocal(t, "node-b", c.Backend(), srv.FSM())
	for _, l := range []*election.Local{a, b} {
		if err := l.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := a.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "a"}); err != nil || !r.Leader {
		t.Fatalf("campaign a: %+v %v", r, err)
	}
	if _, err := b.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "b"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := a.Transfer(ctx, "db", "a", "b"); !errors.Is(err, election.ErrUnknownOutcome) {
		t.Fatalf("transfer: %v, want ErrUnknownOutcome", err)
	}
	if st := a.Self("db"); st.Leader {
		t.Fatalf("a transfer of unknown outcome left its leader reported: %+v", st)
	}
	waitFor(t, 10*time.Second, "b leading after a resigned", func() bool {
		m, _ := srv.FSM().Election("db")
		return m.Holder != nil && m.Holder.ID == "b" && m.WaiterIndex("a") < 0
	})
	mu.Lock()
	attempts := append([]time.Time(nil), resigns...)
	mu.Unlock()
	if len(attempts) != 3 {
		t.Fatalf("%d resign attempts, want 3 (two failed, one landed)", len(attempts))
	}
	if d := attempts[2].Sub(start); d < 200*time.Millisecond {
		t.Fatalf("third resign attempt %v after the transfer: retries do not wait 100 ms apart", d)
	}
	// The candidate is no longer this sidecar's: there is none to transfer.
	waitFor(t, 5*time.Second, "a forgotten by its sidecar", func() bool {
		_, err := a.Transfer(ctx, "db", "", "b")
		return errors.Is(err, fsm.ErrNotLeading) && strings.Contains(err.Error(), "campaigns for no candidate")
	})
	// Nor demoted any longer: campaigning again, it leads.
	if _, err := a.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Resign(ctx, "db", "b"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a leading again", func() bool { return a.Self("db").Leader })
}

// tokenWorld is a one-server cluster whose registry holds a management
// token and tokens A and B (the writes carry the tokens; a single voter
// never loses its leadership, unlike newACLWorld's TCP cluster on a busy
// host), and the callers of those tokens.
type tokenWorld struct {
	srv        *election.Server
	backend    election.Backend
	mgmt, a, b *acl.Caller
}

func newTokenWorld(t *testing.T) *tokenWorld {
	t.Helper()
	c := electiontest.NewCluster(t, 1, nil)
	w := &tokenWorld{srv: c.Servers[0], backend: c.Backend()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, cmd := range []fsm.Command{
		&fsm.ACLBootstrap{Token: fsm.ACLToken{ID: "t-mgmt", SecretHash: acl.HashSecret("secret-mgmt"), Management: true}},
		&fsm.ACLSetToken{Token: fsm.ACLToken{ID: "t-a", SecretHash: acl.HashSecret("secret-a"), Rules: []byte(aclRules)}, Create: true},
		&fsm.ACLSetToken{Token: fsm.ACLToken{ID: "t-b", SecretHash: acl.HashSecret("secret-b"), Rules: []byte(aclRules)}, Create: true},
	} {
		if _, err := w.srv.Apply(ctx, cmd); err != nil {
			t.Fatalf("set up tokens: %v", err)
		}
	}
	r := acl.NewResolver(w.srv.FSM(), acl.Allow)
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
	return w
}

// Only the token that entered a candidate, or a management token, may
// transfer its leadership: another token and a request without token are
// refused with ErrNotOwner, naming who asked, nothing changes and the
// leader is not demoted; a management token's transfer goes through.
func TestLocal_Transfer_onlyItsOwnerOrManagement(t *testing.T) {
	t.Parallel()
	w := newTokenWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l := newLocal(t, "node-a", w.backend, w.srv.FSM())
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ctxA := acl.NewContext(ctx, w.a)
	if r, err := l.Campaign(ctxA, election.CampaignSpec{Election: "db", Candidate: "a"}); err != nil || !r.Leader {
		t.Fatalf("A campaigns: %+v %v", r, err)
	}
	if _, err := l.Campaign(ctxA, election.CampaignSpec{Election: "db", Candidate: "z"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		who, says string
		ctx       context.Context
	}{
		{"B", `token "t-b" may not transfer it`, acl.NewContext(ctx, w.b)},
		{"no token", "a request without token may not transfer it", ctx},
	} {
		before := w.srv.FSM().Digest()
		_, err := l.Transfer(c.ctx, "db", "a", "z")
		if !errors.Is(err, fsm.ErrNotOwner) || !strings.Contains(err.Error(), c.says) {
			t.Fatalf("%s's transfer: %v, want ErrNotOwner saying %q", c.who, err, c.says)
		}
		if w.srv.FSM().Digest() != before {
			t.Fatalf("%s's refused transfer changed the registry", c.who)
		}
		if st := l.Self("db"); !st.Leader || st.Candidate != "a" {
			t.Fatalf("after %s's refused transfer: %+v, want a leading", c.who, st)
		}
	}
	res, err := l.Transfer(acl.NewContext(ctx, w.mgmt), "db", "a", "z")
	if err != nil || res.Leader != "z" || holderOfElection(w.srv.FSM(), "db") != "z" {
		t.Fatalf("management's transfer: %+v %v", res, err)
	}
}

// TestLocal_lockAcquisitionsCountEachAcquisition: a lock taken, released
// and taken again through one sidecar counts two acquisitions in
// sidecar_lock_acquisitions_total; asking again while holding it counts
// none.
func TestLocal_lockAcquisitionsCountEachAcquisition(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	metrics := prometheus.NewRegistry()
	l := newLocalWith(t, "node-a", c.Backend(), srv.FSM(), func(cfg *election.LocalConfig) { cfg.Registerer = metrics })
	lease, err := l.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []string{"lock", "lock", "unlock", "lock"} {
		var err error
		if step == "lock" {
			var r api.LockResult
			if r, err = l.Lock(ctx, election.LockSpec{Name: "job", Lease: lease}); err == nil && !r.Held {
				t.Fatalf("lock not held: %+v", r)
			}
		} else {
			err = l.Unlock(ctx, "job", lease)
		}
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	if got := counterValue(t, metrics, "sidecar_lock_acquisitions_total"); got != 2 {
		t.Fatalf("sidecar_lock_acquisitions_total = %v after lock, lock again, unlock, lock; want 2", got)
	}
}

// counterValue is the value of reg's counter name (0 when absent).
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// TestLocal_Transfer_oldLeaderLeavesItsElection: once a transfer away from
// its candidate succeeded, a sidecar no longer counts that election as
// one it takes part in: its sidecar_election_leader series for it goes
// (1 before, none after).
func TestLocal_Transfer_oldLeaderLeavesItsElection(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	metrics := prometheus.NewRegistry()
	a := newLocalWith(t, "node-a", c.Backend(), srv.FSM(), func(cfg *election.LocalConfig) { cfg.Registerer = metrics })
	b := newLocal(t, "node-b", c.Backend(), srv.FSM())
	for _, l := range []*election.Local{a, b} {
		if err := l.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := a.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "a"}); err != nil || !r.Leader {
		t.Fatalf("a campaigns: %+v %v", r, err)
	}
	if _, err := b.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "b"}); err != nil {
		t.Fatal(err)
	}
	if g := leaderGauges(t, metrics); g["db"] != 1 {
		t.Fatalf("sidecar_election_leader before the transfer: %v, want db 1", g)
	}
	if res, err := a.Transfer(ctx, "db", "a", "b"); err != nil || res.Leader != "b" {
		t.Fatalf("transfer to b: %+v %v", res, err)
	}
	if g := leaderGauges(t, metrics); len(g) != 0 {
		t.Fatalf("sidecar_election_leader after the transfer away: %v, want no series", g)
	}
}
