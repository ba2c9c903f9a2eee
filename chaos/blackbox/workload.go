package blackbox

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/chaos/checker"
)

// Workload timings.
const (
	// opTimeout bounds one app operation; a later answer is unknown.
	opTimeout = 2 * time.Second
	// epoch: keys and services rotate this often, so per-key histories
	// stay small for porcupine and no service nears DNS's 64-record cap.
	epoch = 8 * time.Second
	// liveMargin: an app counts its lease live until the send time of its
	// last acknowledged keepalive plus TTL minus this (clock-rate drift).
	liveMargin = 50 * time.Millisecond
)

// app is one sequential application beside one agent: it registers,
// deregisters and reads instances of that agent's node, holds a lease with
// keepalives, takes try-locks on it and campaigns through the agent.
type app struct {
	id   int
	node *Node
	// api is the app's client of its sidecar, with its own token when the
	// run has ACLs.
	api  *api.Client
	rec  *checker.Recorder
	rng  *rand.Rand
	keys *keySet
	// nodeSessionLost collects sidecars that refused a campaign on their
	// node session as an unknown lease.
	nodeSessionLost *nameSet
	seq             int
	lease           *appLease
}

// appLease is the app's current lease and what it knows of its liveness.
type appLease struct {
	id      string
	ttl     time.Duration
	mu      sync.Mutex
	lastAck time.Time // send time of the last acknowledged keepalive
	gone    bool      // a keepalive answered 404, or it was revoked
	revoked bool
	stop    chan struct{}
	done    chan struct{}
}

// live: surely live by the app's own clock.
func (l *appLease) live() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.gone && time.Now().Before(l.lastAck.Add(l.ttl-liveMargin))
}

// keySet remembers every registry key used, for the final reads.
type keySet struct {
	mu   sync.Mutex
	keys map[string]keyRef
}

type keyRef struct {
	node    *Node
	service string
}

func (k *keySet) add(key string, ref keyRef) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.keys[key] = ref
}

// outcome classifies an HTTP answer: nil is ok; a 404 or 409 is a definite
// answer of the registry (ok, refused); other 4xx are refusals that did
// nothing (failed); timeouts, connection errors and 5xx are unknown.
func outcome(err error) (checker.Outcome, bool) {
	var se *api.StatusError
	switch {
	case err == nil:
		return checker.OK, false
	case errors.As(err, &se) && (se.Code == http.StatusNotFound || se.Code == http.StatusConflict):
		return checker.OK, true
	case errors.As(err, &se) && se.Code >= 400 && se.Code < 500:
		return checker.Failed, false
	}
	return checker.Unknown, false
}

func (a *app) now() int64 { return a.rec.Now() }

// key picks one of two keys of the current epoch on this app's node; the
// service rotates with the epoch too.
func (a *app) key() (string, string) {
	e := a.now() / int64(epoch)
	key := fmt.Sprintf("%s-k%d-%d", a.node.Name, e, a.rng.Intn(2))
	svc := fmt.Sprintf("kv%d", e)
	a.keys.add(key, keyRef{node: a.node, service: svc})
	return key, svc
}

func (a *app) loop(ctx context.Context) {
	defer a.dropLease()
	for ctx.Err() == nil {
		switch p := a.rng.Float64(); {
		case p < 0.25:
			a.put(ctx)
		case p < 0.33:
			a.del(ctx)
		case p < 0.55:
			a.get(ctx, true)
		case p < 0.62:
			a.get(ctx, false)
		case p < 0.82:
			a.tryLock(ctx)
		case p < 0.95:
			a.campaign(ctx)
		default:
			a.revoke(ctx)
		}
		// Apps are not a load test: a short think time keeps 2 cores free
		// for the agents.
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(10+a.rng.Intn(40)) * time.Millisecond):
		}
	}
}

func (a *app) put(ctx context.Context) {
	a.seq++
	key, svc := a.key()
	val := fmt.Sprintf("a%d-%d", a.id, a.seq)
	op := checker.Op{Client: a.id, Kind: checker.Put, Key: key, Value: val, Call: a.now()}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	_, err := a.api.Register(octx, api.ServiceRegistration{ID: key, Name: svc, Address: a.node.IP,
		Port: 1 + a.seq%60000, Meta: map[string]string{"v": val}})
	cancel()
	op.Return = a.now()
	op.Outcome, _ = outcome(err)
	if err != nil {
		op.Err = err.Error()
	}
	a.rec.Add(op)
}

func (a *app) del(ctx context.Context) {
	key, _ := a.key()
	op := checker.Op{Client: a.id, Kind: checker.Del, Key: key, Call: a.now()}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	err := a.api.Deregister(octx, key)
	cancel()
	op.Return = a.now()
	var refused bool
	op.Outcome, refused = outcome(err)
	op.Found = err == nil
	if err != nil {
		op.Err = err.Error()
		if op.Outcome == checker.OK && !refused {
			op.Outcome = checker.Unknown
		}
	}
	a.rec.Add(op)
}

// get reads the key through the app's agent: consistent (a Get in the
// history) or from the agent's own copy (a StaleRead). A read that failed
// did nothing and is not recorded.
func (a *app) get(ctx context.Context, consistent bool) {
	key, svc := a.key()
	kind := checker.StaleRead
	if consistent {
		kind = checker.Get
	}
	op := checker.Op{Client: a.id, Kind: kind, Key: key, Call: a.now()}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	list, _, err := a.api.Service(octx, svc, false, "", &api.QueryOptions{Consistent: consistent})
	cancel()
	if err != nil && !api.IsNotFound(err) {
		return
	}
	op.Return = a.now()
	for _, in := range list {
		if in.ID == key && in.Node == a.node.Name {
			op.Value, op.Found = in.Meta["v"], true
		}
	}
	a.rec.Add(op)
}

// ensureLease grants the app a lease if it has none live, and starts its
// keepalives.
func (a *app) ensureLease(ctx context.Context) *appLease {
	if l := a.lease; l != nil {
		l.mu.Lock()
		gone := l.gone
		l.mu.Unlock()
		if !gone {
			return l
		}
		a.dropLease()
	}
	ttl := time.Second + time.Duration(a.rng.Int63n(int64(time.Second)))
	ttl = ttl.Round(100 * time.Millisecond)
	invoke := time.Now()
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	l, err := a.api.GrantLease(octx, ttl)
	cancel()
	if err != nil {
		return nil
	}
	a.rec.LeaseGranted(l.ID, ttl, a.rec.At(invoke))
	al := &appLease{id: l.ID, ttl: ttl, lastAck: invoke, stop: make(chan struct{}), done: make(chan struct{})}
	a.lease = al
	go a.keepAlive(al)
	return al
}

// keepAlive renews the lease every third of its TTL until stopped or gone.
// An acknowledged keepalive moves lastAck to its send time; a 404 means the
// lease is gone, which the checker compares with lastAck + TTL.
func (a *app) keepAlive(l *appLease) {
	defer close(l.done)
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), l.ttl)
		_, err := a.api.KeepAlive(ctx, l.id)
		cancel()
		switch {
		case err == nil:
			l.mu.Lock()
			if sent.After(l.lastAck) {
				l.lastAck = sent
			}
			l.mu.Unlock()
			a.rec.KeepAliveAcked(l.id, a.rec.At(sent))
		case api.IsNotFound(err):
			l.mu.Lock()
			l.gone = true
			l.mu.Unlock()
			// The latest moment it may have gone: the answer's arrival.
			a.rec.LeaseGone(l.id, a.node.Name, a.now())
			return
		}
	}
}

// dropLease stops keepalives (the lease then ends by its TTL).
func (a *app) dropLease() {
	if a.lease == nil {
		return
	}
	close(a.lease.stop)
	<-a.lease.done
	a.lease = nil
}

func (a *app) lockName() string {
	return fmt.Sprintf("p%d-%d", a.now()/int64(epoch), a.rng.Intn(2))
}

// holdFor: mostly short, sometimes past the TTL so faults hit live holds.
func (a *app) holdFor(ttl time.Duration) time.Duration {
	if a.rng.Intn(4) == 0 {
		return ttl + time.Duration(a.rng.Int63n(int64(ttl)))
	}
	return time.Duration(a.rng.Int63n(int64(400 * time.Millisecond)))
}

// hold writes to the fenced resource while the holder is surely live.
func (a *app) hold(ctx context.Context, g *checker.Grant, live func() bool, d time.Duration) {
	end := time.Now().Add(d)
	for i := 0; i < 10000 && ctx.Err() == nil && live(); i++ {
		if !a.fence(ctx, g) {
			return
		}
		a.rec.Act(g, live)
		if time.Now().After(end) {
			return
		}
		time.Sleep(time.Duration(10+a.rng.Intn(40)) * time.Millisecond) // pace of the app's writes
	}
}

// fence asks the app's sidecar whether the grant's token is still the live
// holder's (GET .../fence, confirmed with a quorum) before the app acts,
// and records the check: one that began after a greater token was
// granted must not answer current. It reports whether the app may act.
func (a *app) fence(ctx context.Context, g *checker.Grant) bool {
	op := checker.Op{Client: a.id, Kind: checker.Fence, Key: g.Name, Election: g.Election, Token: g.Token, Call: a.now()}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	var res *api.FenceResult
	var err error
	if g.Election {
		res, err = a.api.ElectionFence(octx, g.Name, g.Token)
	} else {
		res, err = a.api.LockFence(octx, g.Name, g.Token)
	}
	cancel()
	op.Return = a.now()
	op.Outcome, _ = outcome(err)
	if err != nil {
		op.Err = err.Error()
	} else {
		op.Held, op.Found = res.Current, true
	}
	a.rec.Add(op)
	return err == nil && res.Current
}

func (a *app) tryLock(ctx context.Context) {
	l := a.ensureLease(ctx)
	if l == nil {
		return
	}
	name := a.lockName()
	op := checker.Op{Client: a.id, Kind: checker.TryLock, Key: name, Lease: l.id, Call: a.now()}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	res, err := a.api.Lock(octx, name, api.LockRequest{Lease: l.id, Value: strconv.Itoa(a.id)})
	cancel()
	op.Return = a.now()
	op.Outcome, op.Refused = outcome(err)
	if err != nil {
		op.Err = err.Error()
	} else {
		op.Held, op.Token = res.Held, res.Token
	}
	a.rec.Add(op)
	if op.Outcome == checker.Failed {
		return
	}
	if op.Held {
		g := a.rec.AddGrant(checker.Grant{Name: name, Client: a.id, Lease: l.id, Token: op.Token, Invoke: op.Call, Return: op.Return})
		a.hold(ctx, g, l.live, a.holdFor(l.ttl))
	}
	// Release also after an unknown outcome: the lock may be ours.
	if op.Held || op.Outcome == checker.Unknown {
		if a.unlock(name, l.id, op.Token) == checker.Unknown {
			// The release may still land later (a request held up by a
			// partition arrives when it heals, TCP retransmits it). With
			// the acquisition's token it can no longer end a later hold
			// of this lease; but the app cannot tell whether the lock is
			// still its own, and after an acquire of unknown outcome it
			// had no token to name. Start a new lease: this one ends by
			// its TTL.
			a.dropLease()
		}
	}
}

// unlock releases name held by lease and returns the outcome: with the
// acquisition's token only that acquisition (token-guarded release), with
// 0 whatever the lease holds.
func (a *app) unlock(name, lease string, token uint64) checker.Outcome {
	op := checker.Op{Client: a.id, Kind: checker.Unlock, Key: name, Lease: lease, Token: token, Call: a.now()}
	octx, cancel := context.WithTimeout(context.Background(), opTimeout)
	err := a.api.UnlockToken(octx, name, lease, token)
	cancel()
	op.Return = a.now()
	op.Outcome, op.Refused = outcome(err)
	if err != nil {
		op.Err = err.Error()
	}
	a.rec.Add(op)
	return op.Outcome
}

// revoke ends the app's lease explicitly, then tries a lock with it as a
// zombie would: the registry must refuse.
func (a *app) revoke(ctx context.Context) {
	l := a.lease
	if l == nil {
		return
	}
	a.dropLease()
	a.rec.Revoking(l.id)
	op := checker.Op{Client: a.id, Kind: checker.Revoke, Lease: l.id, Call: a.now()}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	err := a.api.RevokeLease(octx, l.id)
	cancel()
	op.Return = a.now()
	op.Outcome, op.Refused = outcome(err)
	if err != nil {
		op.Err = err.Error()
		if op.Outcome == checker.Failed {
			op.Outcome = checker.Unknown // a refusal after a retried attempt may follow an applied one
		}
	}
	a.rec.Add(op)
	if op.Outcome != checker.OK {
		return
	}
	name := a.lockName()
	z := checker.Op{Client: a.id, Kind: checker.TryLock, Key: name, Lease: l.id, Call: a.now()}
	octx, cancel = context.WithTimeout(ctx, opTimeout)
	res, err := a.api.Lock(octx, name, api.LockRequest{Lease: l.id})
	cancel()
	z.Return = a.now()
	z.Outcome, z.Refused = outcome(err)
	if err != nil {
		z.Err = err.Error()
	} else {
		z.Held, z.Token = res.Held, res.Token
	}
	a.rec.Add(z)
	if z.Held {
		a.unlock(name, l.id, z.Token)
	}
}

// campaign runs for one of two elections through the app's agent (on the
// agent's own node lease); while it leads it acts on the fenced resource and
// confirms with GET /v1/elections/{name}/self, which must turn 503 as soon
// as the agent is unsure of its lease.
func (a *app) campaign(ctx context.Context) {
	name := fmt.Sprintf("e%d", a.rng.Intn(2))
	a.seq++
	cand := fmt.Sprintf("a%d-%d", a.id, a.seq)
	wait := time.Duration(100+a.rng.Intn(900)) * time.Millisecond
	// Half the campaigns hang on the app's own lease, half on the
	// sidecar's node session.
	lease, leaseLabel := "", a.node.Name+"/"+cand
	if a.rng.Intn(2) == 0 {
		l := a.ensureLease(ctx)
		if l == nil {
			return
		}
		lease, leaseLabel = l.id, l.id
	}
	invoke := a.now()
	octx, cancel := context.WithTimeout(ctx, wait+opTimeout)
	res, err := a.api.Campaign(octx, name, api.CampaignRequest{Candidate: cand, Value: fmt.Sprintf("%s:%d", a.node.IP, a.seq%60000+1), Wait: wait.String(), Lease: lease})
	cancel()
	ret := a.now()
	if lease == "" && err != nil && api.IsNotFound(err) {
		a.nodeSessionLost.add(a.node.Name)
	}
	if err == nil && res.Leader {
		token := res.Token
		g := a.rec.AddGrant(checker.Grant{Name: name, Election: true, Client: a.id, Lease: leaseLabel, Token: token, Invoke: invoke, Return: ret})
		a.hold(ctx, g, func() bool {
			sctx, cancel := context.WithTimeout(ctx, opTimeout)
			defer cancel()
			st, _, err := a.api.Self(sctx, name, nil)
			return err == nil && st.Leader && st.Token == token && st.Candidate == cand
		}, a.holdFor(2*time.Second))
	}
	rctx, rcancel := context.WithTimeout(context.Background(), opTimeout)
	_ = a.api.Resign(rctx, name, cand) // best effort: a vanished candidacy is fine
	rcancel()
}

// nameSet is a set of node names, safe for concurrent use.
type nameSet struct {
	mu sync.Mutex
	m  map[string]int
}

func (s *nameSet) add(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]int{}
	}
	s.m[name]++
}

func (s *nameSet) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ks := make([]string, 0, len(s.m))
	for k := range s.m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var b strings.Builder
	for i, k := range ks {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s:%d", k, s.m[k])
	}
	return b.String()
}
