package inproc

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"time"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/chaos/checker"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
)

// regNode owns every instance the clients register.
const regNode = "chaos"

// opTimeout bounds one client operation.
const opTimeout = 2 * time.Second

// client is one sequential client: a sidecar on its home server's node,
// with its own holds (election.Local) and one session at a time.
type client struct {
	id  int
	r   *run
	rng *rand.Rand
	ttl time.Duration

	home, gen int
	b         *backend
	local     *election.Local
	sess      *election.Session
	seq       int
	// caller is the client's ACL token (nil without ACLs): every request
	// carries it, as the HTTP API puts a request's token in its context.
	caller *acl.Caller
}

// bg is a background context carrying the client's token, for the
// releases that outlive the operation that asked for them.
func (c *client) bg() context.Context {
	if c.caller == nil {
		return context.Background()
	}
	return acl.NewContext(context.Background(), c.caller)
}

// ensure gives the client a live home server, a Local on it and a session.
// A client whose home server crashed loses its holds as a crash would: they
// end by their leases' TTL.
func (c *client) ensure(ctx context.Context) bool {
	if c.local != nil {
		if s, gen := c.r.c.Server(c.home); s == nil || gen != c.gen {
			c.local.Abandon()
			c.local, c.sess = nil, nil
		}
	}
	if c.local == nil {
		up := c.r.c.Up()
		if len(up) == 0 {
			return false
		}
		c.home = up[c.rng.Intn(len(up))]
		s, gen := c.r.c.Server(c.home)
		if s == nil {
			return false
		}
		c.gen = gen
		c.b = &backend{c: c.r.c, home: c.home, rec: c.r.rec, readVia: -1}
		c.local = election.NewLocal(election.LocalConfig{Node: fmt.Sprintf("c%d", c.id), SessionTTL: c.ttl}, c.b, s.FSM())
	}
	if c.sess != nil {
		select {
		case <-c.sess.Done():
			c.sess = nil
		default:
		}
	}
	if c.sess == nil {
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		s, err := c.local.NewSession(octx, c.ttl)
		if err != nil {
			return false
		}
		c.sess = s
	}
	return true
}

func (c *client) close() {
	if c.local == nil {
		return
	}
	ctx, cancel := context.WithTimeout(c.bg(), 5*time.Second)
	defer cancel()
	c.local.Close(ctx)
	c.local.Abandon()
}

func (c *client) loop(ctx context.Context) {
	defer c.close()
	if c.caller != nil {
		ctx = acl.NewContext(ctx, c.caller)
	}
	for ctx.Err() == nil {
		if !c.ensure(ctx) {
			// Cut off from the leader, its sidecar still answers from its
			// copy of the registry: exactly where a fence check must not.
			for i := 0; i < 10 && c.local != nil && ctx.Err() == nil; i++ {
				if !c.audit(ctx) {
					break // no answer (as it should be): no more waiting on it
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		switch p := c.rng.Float64(); {
		case p < 0.22:
			c.put(ctx)
		case p < 0.28:
			c.del(ctx)
		case p < 0.55:
			c.get(ctx)
		case p < 0.57:
			c.staleRead()
		case p < 0.59:
			c.audit(ctx)
		case p < 0.72:
			c.tryLock(ctx)
		case p < 0.85:
			c.waitLock(ctx)
		case p < 0.94:
			c.campaign(ctx)
		default:
			c.zombie(ctx)
		}
	}
}

func (c *client) key() string {
	k := fmt.Sprintf("k%d-%d", c.r.rec.Now()/int64(c.r.epoch), c.rng.Intn(2))
	c.r.useKey(k)
	return k
}

func (c *client) lockName() string {
	return fmt.Sprintf("p%d-%d", c.r.rec.Now()/int64(c.r.epoch), c.rng.Intn(2))
}

func (c *client) put(ctx context.Context) {
	c.seq++
	key, val := c.key(), fmt.Sprintf("c%d-%d", c.id, c.seq)
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	op := checker.Op{Client: c.id, Kind: checker.Put, Key: key, Value: val, Call: c.r.rec.Now()}
	_, err := c.b.Apply(octx, &fsm.RegisterInstance{Instance: fsm.Instance{ID: key, Name: "svc", Node: regNode, Address: val, Port: 1}})
	op.Return, op.Outcome = c.r.rec.Now(), outcome(err)
	if err != nil {
		op.Err = err.Error()
	}
	c.r.rec.Add(op)
}

func (c *client) del(ctx context.Context) {
	key := c.key()
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	op := checker.Op{Client: c.id, Kind: checker.Del, Key: key, Call: c.r.rec.Now()}
	_, err := c.b.Apply(octx, &fsm.DeregisterInstance{Node: regNode, ID: key})
	op.Return, op.Outcome = c.r.rec.Now(), outcome(err)
	op.Found = err == nil
	if err != nil {
		op.Err = err.Error()
	}
	c.r.rec.Add(op)
}

func (c *client) get(ctx context.Context) {
	c.r.read(ctx, c.id, c.b, c.key())
}

// read records a consistent read; a read that failed is no operation.
func (r *run) read(ctx context.Context, id int, b *backend, key string) bool {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	op := checker.Op{Client: id, Kind: checker.Get, Key: key, Call: r.rec.Now()}
	reg, err := b.consistentRead(octx)
	if err != nil {
		return false
	}
	if in, ok := reg.Instance(regNode, key); ok {
		op.Value, op.Found = in.Address, true
	}
	op.Return = r.rec.Now()
	r.rec.Add(op)
	return true
}

func (c *client) staleRead() {
	key := c.key()
	s, _ := c.r.c.Server(c.home)
	if s == nil {
		return
	}
	op := checker.Op{Client: c.id, Kind: checker.StaleRead, Key: key, Call: c.r.rec.Now()}
	if in, ok := s.FSM().Instance(regNode, key); ok {
		op.Value, op.Found = in.Address, true
	}
	op.Return = c.r.rec.Now()
	c.r.rec.Add(op)
}

// holdFor is how long a holder keeps what it got: mostly short, sometimes
// longer than its TTL so that faults hit live holds.
func (c *client) holdFor() time.Duration {
	if c.rng.Intn(5) == 0 {
		return c.ttl + time.Duration(c.rng.Int63n(int64(c.ttl)))
	}
	return time.Duration(c.rng.Int63n(int64(400 * time.Millisecond)))
}

// hold acts on the fenced resource while the holder is surely live. Before
// each act it asks the fence whether its token is still the live holder's
// (SPEC: fence checks, confirmed with a quorum), as a resource that cannot
// keep its own highest token would: the check is recorded, and the
// checker flags a "current" answer to a check that began after a greater
// token was granted.
func (c *client) hold(ctx context.Context, g *checker.Grant, live func() bool, d time.Duration) {
	end := time.Now().Add(d)
	for ctx.Err() == nil && live() {
		if current, _ := c.fence(ctx, g); !current {
			return
		}
		c.r.rec.Act(g, live)
		if c.rng.Intn(8) == 0 {
			// Someone else's token, as a resource shown it would ask.
			c.audit(ctx)
		}
		if time.Now().After(end) {
			return
		}
		time.Sleep(time.Duration(5+c.rng.Intn(25)) * time.Millisecond)
	}
}

// audit fence-checks, through this client's sidecar, the token its copy of
// the registry shows as the holder of a recently granted name, as a
// resource does with the token it is shown: if that copy is stale (cut
// off from the leader), the fence check must still answer with what a
// quorum knows, never call an old token current.
// It reports whether the check was answered.
func (c *client) audit(ctx context.Context) bool {
	g, ok := c.r.rec.RecentGrant(c.rng.Intn)
	if !ok {
		return false
	}
	s, _ := c.r.c.Server(c.home)
	if s == nil {
		return false
	}
	m, ok := s.FSM().Lock(g.Name)
	if g.Election {
		m, ok = s.FSM().Election(g.Name)
	}
	if !ok || m.Holder == nil {
		return false
	}
	g.Token = m.Holder.Token
	_, answered := c.fence(ctx, &g)
	return answered
}

// fence runs and records one fence check of a grant; it reports whether
// the token is current (the holder may act) and whether it was answered.
func (c *client) fence(ctx context.Context, g *checker.Grant) (current, answered bool) {
	return c.r.fence(ctx, c.local, c.id, g)
}

// fence runs one fence check of g's token through local, recorded as
// client id's.
func (r *run) fence(ctx context.Context, local *election.Local, id int, g *checker.Grant) (current, answered bool) {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	op := checker.Op{Client: id, Kind: checker.Fence, Key: g.Name, Election: g.Election, Token: g.Token, Call: r.rec.Now()}
	var res api.FenceResult
	var err error
	if g.Election {
		res, err = local.ElectionFence(octx, g.Name, g.Token)
	} else {
		res, err = local.LockFence(octx, g.Name, g.Token)
	}
	op.Return, op.Outcome = r.rec.Now(), outcome(err)
	op.Held, op.Found = res.Current, err == nil
	if err != nil {
		op.Err = err.Error()
	}
	r.rec.Add(op)
	return err == nil && res.Current, err == nil
}

// announce tells each server's handover watcher (watchHandovers) of a
// grant that returned; a watcher still busy with an earlier one misses it.
func (r *run) announce(g *checker.Grant) {
	for _, ch := range r.handovers {
		select {
		case ch <- *g:
		default:
		}
	}
}

// watchHandovers is a resource beside server i's sidecar that its
// previous holder writes to right at a handover: for each grant announced,
// if server i's copy of the registry still shows an older holder of the
// name (a follower learns of a commit one round after the leader, longer
// while cut off), it fence-checks that holder's token through the
// sidecar at once. The check must answer from what a quorum knows: "not
// current". A sidecar that answers from its copy (fenceskipsquorum) calls
// the old token current, after the new one was granted.
func (r *run) watchHandovers(ctx context.Context, i int, ch <-chan checker.Grant) {
	id := r.cfg.Clients + 1 + i // after the clients and the final reads
	var local *election.Local
	gen := 0
	defer func() {
		if local != nil {
			local.Abandon()
		}
	}()
	for {
		var g checker.Grant
		select {
		case <-ctx.Done():
			return
		case g = <-ch:
		}
		s, sgen := r.c.Server(i)
		if s == nil {
			continue
		}
		if local == nil || sgen != gen {
			if local != nil {
				local.Abandon()
			}
			local = election.NewLocal(election.LocalConfig{Node: fmt.Sprintf("w%d", i)},
				&backend{c: r.c, home: i, rec: r.rec, readVia: -1}, s.FSM())
			gen = sgen
		}
		m, ok := s.FSM().Lock(g.Name)
		if g.Election {
			m, ok = s.FSM().Election(g.Name)
		}
		if !ok || m.Holder == nil || m.Holder.Token >= g.Token {
			continue // nothing older to check: caught up, or never held
		}
		old := g
		old.Token = m.Holder.Token
		r.fence(ctx, local, id, &old)
	}
}

func (c *client) tryLock(ctx context.Context) {
	name, sess := c.lockName(), c.sess
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	op := checker.Op{Client: c.id, Kind: checker.TryLock, Key: name, Lease: sess.ID(), Call: c.r.rec.Now()}
	res, err := c.local.Lock(octx, election.LockSpec{Name: name, Lease: sess.ID()})
	cancel()
	op.Return, op.Outcome = c.r.rec.Now(), outcome(err)
	op.Held, op.Token = res.Held, res.Token
	op.Refused = errors.Is(err, fsm.ErrUnknownLease)
	if err != nil {
		op.Err = err.Error()
	}
	c.r.rec.Add(op)
	if op.Outcome == checker.Failed {
		return
	}
	if res.Held {
		g := c.r.rec.AddGrant(checker.Grant{Name: name, Client: c.id, Lease: sess.ID(), Token: res.Token, Invoke: op.Call, Return: op.Return})
		c.r.announce(g)
		c.hold(ctx, g, sess.Live, c.holdFor())
	}
	// Release also after an unknown outcome: the lock may be ours.
	if res.Held || op.Outcome == checker.Unknown {
		if c.unlock(name, sess.ID(), res.Token, true) == checker.Unknown {
			c.dropSession(ctx, sess)
		}
	}
}

// dropSession ends a session after a release of unknown outcome. A
// guarded unlock (with the acquisition's token) in flight can no longer
// end a later hold on the same lease, but one without a token (after an
// acquire of unknown outcome) can, and resign is keyed by candidate; and
// the client cannot tell whether the lock is still its own. Like the
// black-box layer's apps, it stops using the lease: it revokes it
// (recorded, as a zombie's revocation is) and opens a new session at its
// next operation.
func (c *client) dropSession(ctx context.Context, sess *election.Session) {
	if c.sess != sess {
		return
	}
	c.sess = nil
	c.revoke(ctx, sess)
}

// revoke closes sess (revoking its lease) and records the revocation.
func (c *client) revoke(ctx context.Context, sess *election.Session) checker.Outcome {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	rv := checker.Op{Client: c.id, Kind: checker.Revoke, Lease: sess.ID(), Call: c.r.rec.Now()}
	err := sess.Close(octx)
	rv.Return, rv.Outcome = c.r.rec.Now(), outcome(err)
	rv.Refused = errors.Is(err, fsm.ErrUnknownLease)
	if err != nil {
		rv.Err = err.Error()
		if rv.Outcome == checker.Failed {
			// Retried through leader changes: it may have been applied.
			rv.Outcome = checker.Unknown
		}
	}
	c.r.rec.Add(rv)
	return rv.Outcome
}

// unlock releases name held by lease and returns the outcome. With the
// acquisition's token it releases only that acquisition (token-guarded
// release); 0, after an acquire of unknown outcome, whatever the lease
// holds.
func (c *client) unlock(name, lease string, token uint64, record bool) checker.Outcome {
	octx, cancel := context.WithTimeout(c.bg(), opTimeout)
	defer cancel()
	op := checker.Op{Client: c.id, Kind: checker.Unlock, Key: name, Lease: lease, Token: token, Call: c.r.rec.Now()}
	err := c.local.UnlockToken(octx, name, lease, token)
	op.Return, op.Outcome = c.r.rec.Now(), outcome(err)
	op.Refused = errors.Is(err, fsm.ErrNotHolder) || errors.Is(err, fsm.ErrUnknownLock) || errors.Is(err, fsm.ErrStaleToken)
	if err != nil {
		op.Err = err.Error()
	}
	if record {
		c.r.rec.Add(op)
	}
	return op.Outcome
}

func (c *client) waitLock(ctx context.Context) {
	name, sess := fmt.Sprintf("q%d", c.rng.Intn(2)), c.sess
	wait := time.Duration(200+c.rng.Intn(1300)) * time.Millisecond
	octx, cancel := context.WithTimeout(ctx, wait+opTimeout)
	invoke := c.r.rec.Now()
	res, err := c.local.Lock(octx, election.LockSpec{Name: name, Lease: sess.ID(), Wait: wait})
	cancel()
	ret := c.r.rec.Now()
	if err == nil && res.Held {
		g := c.r.rec.AddGrant(checker.Grant{Name: name, Client: c.id, Lease: sess.ID(), Token: res.Token, Invoke: invoke, Return: ret})
		c.r.announce(g)
		c.hold(ctx, g, sess.Live, c.holdFor())
	}
	if c.unlock(name, sess.ID(), res.Token, false) == checker.Unknown {
		c.dropSession(ctx, sess)
	}
}

func (c *client) campaign(ctx context.Context) {
	name, sess := fmt.Sprintf("e%d", c.rng.Intn(2)), c.sess
	cand := fmt.Sprintf("c%d", c.id)
	wait := time.Duration(100+c.rng.Intn(900)) * time.Millisecond
	octx, cancel := context.WithTimeout(ctx, wait+opTimeout)
	invoke := c.r.rec.Now()
	res, err := c.local.Campaign(octx, election.CampaignSpec{Election: name, Candidate: cand, Value: cand, Lease: sess.ID(), Wait: wait})
	cancel()
	ret := c.r.rec.Now()
	if err == nil && res.Leader {
		token := res.Token
		g := c.r.rec.AddGrant(checker.Grant{Name: name, Election: true, Client: c.id, Lease: sess.ID(), Token: token, Invoke: invoke, Return: ret})
		c.r.announce(g)
		c.hold(ctx, g, func() bool {
			st := c.local.Self(name)
			return st.Leader && st.Token == token
		}, c.holdFor())
	}
	rctx, rcancel := context.WithTimeout(c.bg(), opTimeout)
	err = c.local.Resign(rctx, name, cand)
	rcancel()
	if outcome(err) == checker.Unknown {
		// Resign is keyed by candidate: a late one would end a later
		// candidacy of the same name (see dropSession).
		c.dropSession(ctx, sess)
	}
}

// zombie revokes the session, then tries a lock with the dead lease, as a
// client that missed the end of its session would: the registry must
// refuse.
func (c *client) zombie(ctx context.Context) {
	sess := c.sess
	select {
	case <-sess.Done():
		return
	default:
	}
	c.sess = nil
	if c.revoke(ctx, sess) != checker.OK {
		return
	}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	name := c.lockName()
	op := checker.Op{Client: c.id, Kind: checker.TryLock, Key: name, Lease: sess.ID(), Call: c.r.rec.Now()}
	res, err := c.b.Apply(octx, &fsm.AcquireLock{Name: name, Lease: sess.ID(), Node: fmt.Sprintf("c%d", c.id), Now: time.Now().UnixNano(),
		Auth: fsm.Auth{By: c.caller.By()}})
	op.Return, op.Outcome = c.r.rec.Now(), outcome(err)
	op.Refused = errors.Is(err, fsm.ErrUnknownLease)
	if err == nil {
		op.Held, op.Token = res.Held, res.Token
	} else {
		op.Err = err.Error()
	}
	c.r.rec.Add(op)
}
