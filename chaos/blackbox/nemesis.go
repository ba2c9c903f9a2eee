package blackbox

import (
	"context"
	"fmt"
	"math/rand"
	"syscall"
	"time"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/chaos/checker"
)

// faultKinds are the nemesis's faults, drawn from the seed one at a time.
var faultKinds = []string{
	"isolate-leader", "partition", "bridge", "ring", "loss50", "oneway",
	"pause-leader", "pause-follower", "pause-client", "kill",
}

// nemesis injects one fault at a time with quiet gaps between.
type nemesis struct {
	c   *Cluster
	rec *checker.Recorder
	rng *rand.Rand
	// probes measures DNS lag in quiet gaps (nil: none).
	probe func(ctx context.Context)
	// newLeader: time to a new leader after each leader kill or isolation.
	newLeader []time.Duration
	// pauses counts SIGSTOPs; selfChecked those after which a rival had
	// won, so the paused sidecar's self answer was checked.
	pauses, selfChecked int
	// fenceChecked counts fence checks of a paused leader's old token
	// after its successor was granted.
	fenceChecked int
}

func (m *nemesis) shuffled(nodes []*Node) []*Node {
	s := append([]*Node(nil), nodes...)
	m.rng.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
	return s
}

func others(all []*Node, not ...*Node) []*Node {
	var out []*Node
outer:
	for _, n := range all {
		for _, x := range not {
			if n == x {
				continue outer
			}
		}
		out = append(out, n)
	}
	return out
}

// run injects faults until ctx ends, then heals.
func (m *nemesis) run(ctx context.Context) error {
	for ctx.Err() == nil {
		// Quiet gap: the cluster recovers, and DNS lag is measured.
		gapEnd := time.Now().Add(time.Duration(1000+m.rng.Intn(1500)) * time.Millisecond)
		if m.probe != nil {
			m.probe(ctx)
		}
		if !sleepUntil(ctx, gapEnd) {
			break
		}
		kind := faultKinds[m.rng.Intn(len(faultKinds))]
		if err := m.inject(ctx, kind); err != nil {
			return fmt.Errorf("fault %s: %w", kind, err)
		}
	}
	return nil
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(time.Until(t)):
		return true
	}
}

// inject applies one fault for its duration and undoes it. It runs to the
// end even when ctx ends, so nothing stays cut, stopped or dead.
func (m *nemesis) inject(ctx context.Context, kind string) error {
	c := m.c
	bg := context.Background()
	dur := time.Duration(1000+m.rng.Intn(3000)) * time.Millisecond
	leader := c.Leader(bg, c.Up(c.Servers))
	if leader == nil {
		leader = c.Servers[m.rng.Intn(len(c.Servers))]
	}
	f := checker.Fault{Kind: kind, Start: m.rec.Now()}
	defer func() {
		c.logf("fault %s %s: %v", f.Kind, f.Detail, time.Duration(f.Stop-f.Start).Round(time.Millisecond))
	}()
	var rules map[*Node]Rules
	switch kind {
	case "isolate-leader":
		rules = Partition([]*Node{leader}, others(c.Nodes, leader))
		f.Detail = leader.Name
	case "partition":
		s := m.shuffled(c.Servers)
		// Fresh slices: appending to s[:2] would overwrite s[2].
		minority := append([]*Node(nil), s[:2]...)
		majority := append([]*Node(nil), s[2:]...)
		for _, cl := range c.Clients {
			if m.rng.Intn(2) == 0 {
				minority = append(minority, cl)
			} else {
				majority = append(majority, cl)
			}
		}
		rules = Partition(minority, majority)
		f.Detail = names(minority) + " | " + names(majority)
	case "bridge":
		// a,b | c | d,e: c sees everyone, the two sides only c.
		s := m.shuffled(c.Servers)
		rules = Partition(s[:2], s[3:])
		f.Detail = fmt.Sprintf("%s | %s | %s", names(s[:2]), s[2].Name, names(s[3:]))
	case "ring":
		// Each server sees its two ring neighbours only: every one is in a
		// majority, no two of them the same.
		s := m.shuffled(c.Servers)
		var pairs [][2]*Node
		for i := range s {
			pairs = append(pairs, [2]*Node{s[i], s[(i+2)%len(s)]})
		}
		rules = CutPairs(pairs)
		f.Detail = names(s)
	case "loss50":
		rules = map[*Node]Rules{}
		for _, n := range c.Nodes {
			rules[n] = Rules{Loss: 0.5}
		}
	case "oneway":
		// One node's packets to every other are dropped, or every other's
		// packets to it: the leader half the time.
		n := leader
		if m.rng.Intn(2) == 0 {
			n = c.Nodes[m.rng.Intn(len(c.Nodes))]
		}
		rules = map[*Node]Rules{}
		if m.rng.Intn(2) == 0 {
			rules[n] = Rules{NoSend: others(c.Nodes, n)}
			f.Detail = n.Name + " -/-> others"
		} else {
			for _, o := range others(c.Nodes, n) {
				rules[o] = Rules{NoSend: []*Node{n}}
			}
			f.Detail = "others -/-> " + n.Name
		}
	case "pause-leader", "pause-follower", "pause-client":
		n := leader
		switch kind {
		case "pause-follower":
			n = others(c.Servers, leader)[m.rng.Intn(len(c.Servers)-1)]
		case "pause-client":
			n = c.Clients[m.rng.Intn(len(c.Clients))]
		}
		// Longer than the node's lease, so its holds must end.
		dur = c.Env.SessionTTL + time.Duration(500+m.rng.Intn(1500))*time.Millisecond
		f.Detail = fmt.Sprintf("%s for %v", n.Name, dur)
		return m.pause(n, dur, &f)
	case "kill":
		n := c.Nodes[m.rng.Intn(len(c.Nodes))]
		if m.rng.Intn(2) == 0 {
			n = leader
		}
		f.Detail = n.Name
		killed := time.Now()
		if err := c.Kill(n); err != nil {
			return err
		}
		if n == leader {
			rest := others(c.Servers, n)
			if err := poll(bg, NewLeaderBound, 10*time.Millisecond, func() (bool, string) {
				return c.Leader(bg, rest) != nil, "no leader among " + names(rest)
			}); err == nil {
				m.newLeader = append(m.newLeader, time.Since(killed))
			} else {
				m.rec.Anomaly("kill of leader %s: %v", n.Name, err)
			}
		}
		sleepUntil(bg, killed.Add(dur))
		if err := c.Start(n); err != nil {
			return err
		}
		f.Stop = m.rec.Now()
		m.rec.AddFault(f)
		return nil
	}
	if err := c.ApplyRules(rules); err != nil {
		return err
	}
	time.Sleep(dur) // the fault's length is the point, nothing to poll
	if err := c.Heal(); err != nil {
		return err
	}
	f.Stop = m.rec.Now()
	m.rec.AddFault(f)
	return nil
}

// pause SIGSTOPs n for dur, then SIGCONTs it. Around it, it checks
// self-demotion: a probe candidate campaigns through n before the pause, a
// rival through another node during it; if the rival won before n was
// continued, n's first answer to GET /v1/elections/{name}/self must be 503.
func (m *nemesis) pause(n *Node, dur time.Duration, f *checker.Fault) error {
	c := m.c
	bg := context.Background()
	m.pauses++
	name := fmt.Sprintf("pz%d", m.pauses)
	cand := "probe-" + n.Name
	// Leases of their own, kept alive through each candidate's sidecar, so
	// the check does not depend on the sidecars' node sessions.
	probeLease, err := keepLease(n, c.Env.SessionTTL)
	leads := false
	var res *api.CampaignResult
	if err == nil {
		defer probeLease.stop()
		cctx, cancel := context.WithTimeout(bg, 2*time.Second)
		res, err = n.API.Campaign(cctx, name, api.CampaignRequest{Candidate: cand, Value: n.IP + ":1", Wait: "1s", Lease: probeLease.id})
		cancel()
		leads = err == nil && res.Leader
	}
	if err := c.Signal(n, syscall.SIGSTOP); err != nil {
		return err
	}
	stopped := time.Now()
	rivalNode := others(c.Up(c.Nodes), n)[m.rng.Intn(len(c.Up(c.Nodes))-1)]
	type won struct {
		res *api.CampaignResult
		err error
	}
	rival := make(chan won, 1)
	if leads {
		go func() {
			rl, err := keepLease(rivalNode, c.Env.SessionTTL)
			if err != nil {
				rival <- won{nil, err}
				return
			}
			defer rl.stop()
			rctx, cancel := context.WithTimeout(bg, dur+3*time.Second)
			defer cancel()
			r, err := rivalNode.API.Campaign(rctx, name, api.CampaignRequest{Candidate: "rival", Value: rivalNode.IP + ":1", Wait: (dur + time.Second).String(), Lease: rl.id})
			rival <- won{r, err}
		}()
	}
	sleepUntil(bg, stopped.Add(dur)) // the fault's length is the point, nothing to poll
	var before *won
	select {
	case w := <-rival:
		before = &w
	default:
	}
	if err := c.Signal(n, syscall.SIGCONT); err != nil {
		return err
	}
	f.Stop = m.rec.Now()
	m.rec.AddFault(*f)
	if !leads {
		c.logf("pause of %s: probe candidate did not lead (%v), no self-demotion check", n.Name, err)
	}
	if leads {
		sctx, cancel := context.WithTimeout(bg, 2*time.Second)
		st, _, err := n.API.Self(sctx, name, nil)
		cancel()
		if before != nil && before.err == nil && before.res.Leader {
			m.selfChecked++
			if err == nil && st.Leader && st.Token == res.Token {
				m.rec.Anomaly("%s: %s still answers leader (token %d) after a SIGSTOP of %v, while rival on %s was granted token %d before SIGCONT",
					name, n.Name, res.Token, dur, rivalNode.Name, before.res.Token)
			}
			// The successor was granted: a fence check of the old
			// leader's token answers 409 with a greater token, through
			// the node that was cut off as through the rival's.
			for _, via := range []*Node{n, rivalNode} {
				fctx, cancel := context.WithTimeout(bg, 3*time.Second)
				fr, ferr := via.API.ElectionFence(fctx, name, res.Token)
				cancel()
				m.fenceChecked++
				if ferr == nil && (fr.Current || fr.Token != 0 && fr.Token < before.res.Token) {
					m.rec.Anomaly("%s: fence check of %s's old token %d through %s answered current=%v token %d after rival on %s was granted token %d",
						name, n.Name, res.Token, via.Name, fr.Current, fr.Token, rivalNode.Name, before.res.Token)
				}
			}
		}
		// What the servers think, for the log: the election's holder and
		// whether the probe's lease still exists after the pause.
		var view []string
		for _, srv := range c.Up(c.Servers) {
			ectx, cancel := context.WithTimeout(bg, time.Second)
			e, _, eerr := srv.API.Election(ectx, name, nil)
			cancel()
			if eerr == nil && e.Leader != nil {
				view = append(view, fmt.Sprintf("%s: %s/%d", srv.Name, e.Leader.Candidate, e.Leader.Token))
			} else {
				view = append(view, fmt.Sprintf("%s: vacant (%v)", srv.Name, eerr))
			}
		}
		c.logf("pause of %s (%v, probe lease %s, token %d): servers see %v", n.Name, dur, probeLease.id, res.Token, view)
		if before == nil {
			w := <-rival
			c.logf("pause of %s: rival on %s won only after SIGCONT (%+v, %v); self said %+v (%v)", n.Name, rivalNode.Name, w.res, w.err, st, err)
		} else {
			c.logf("pause of %s: rival on %s before SIGCONT: %+v (%v); self said %+v (%v)", n.Name, rivalNode.Name, before.res, before.err, st, err)
		}
		for _, x := range []struct {
			n    *Node
			cand string
		}{{n, cand}, {rivalNode, "rival"}} {
			rctx, cancel := context.WithTimeout(bg, 2*time.Second)
			_ = x.n.API.Resign(rctx, name, x.cand) // best effort: a vanished candidacy is fine
			cancel()
		}
	}
	return nil
}

// keptLease is a lease the harness keeps alive through one sidecar.
type keptLease struct {
	id   string
	quit chan struct{}
	done chan struct{}
}

// keepLease grants a lease through n and renews it every third of ttl
// until stop.
func keepLease(n *Node, ttl time.Duration) (*keptLease, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	l, err := n.API.GrantLease(ctx, ttl)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("lease through %s: %w", n.Name, err)
	}
	k := &keptLease{id: l.ID, quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(k.done)
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-k.quit:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), ttl/3)
			_, err := n.API.KeepAlive(ctx, k.id)
			cancel()
			if api.IsNotFound(err) {
				return
			}
		}
	}()
	return k, nil
}

func (k *keptLease) stop() {
	close(k.quit)
	<-k.done
}
