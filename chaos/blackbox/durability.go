package blackbox

import (
	"context"
	"fmt"
	"math/rand"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidecarhq/sidecar/api"
)

// Bounds of the durability series.
const (
	// NewLeaderBound: the survivors must agree on a new leader within this
	// after a leader is killed (about one election timeout is expected).
	NewLeaderBound = 10 * time.Second
	// ConvergeBound: from a restart until every node's own registry copy
	// has the same digest and index.
	ConvergeBound = 10 * time.Second
	// writeTimeout bounds one registration; a later answer is unknown.
	writeTimeout = 3 * time.Second
	durService   = "dur"
)

// DurabilityResult is what the series measured.
type DurabilityResult struct {
	LeaderKills, RandomKills int
	Acked, Attempted         int
	Lost                     []string
	NewLeader                []time.Duration
	Converge                 []time.Duration
	Failures                 []string
	// Transport is the Raft/RPC port's: "tls" or "plain".
	Transport string
}

func (r *DurabilityResult) String() string {
	return fmt.Sprintf("BLACKBOX-DURABILITY transport %s, kills %d (leader %d, random %d), registrations attempted %d, acknowledged %d, lost %d; new leader (n=%d) p50 %v max %v; convergence after restart (n=%d) p50 %v max %v; failures %d",
		r.Transport, r.LeaderKills+r.RandomKills, r.LeaderKills, r.RandomKills, r.Attempted, r.Acked, len(r.Lost),
		len(r.NewLeader), pct(r.NewLeader, 50), pct(r.NewLeader, 100), len(r.Converge), pct(r.Converge, 50), pct(r.Converge, 100), len(r.Failures))
}

// pct is the p-th percentile (nearest rank) of ds, rounded to the ms.
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return s[i-1].Round(time.Millisecond)
}

// writers register unique instances sequentially, each through its own
// agent, and remember every acknowledged one. They can be paused, so that
// convergence is measured on a quiet registry.
type writers struct {
	c        *Cluster
	rng      *rand.Rand
	paused   atomic.Bool
	inflight atomic.Int64
	attempts atomic.Int64

	mu    sync.Mutex
	acked []string
}

func (w *writers) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// run is one writer: pick(i) names the agent of its i-th write.
func (w *writers) run(ctx context.Context, id int, pick func() *Node) {
	for i := 0; ctx.Err() == nil; i++ {
		if w.paused.Load() {
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		n := pick()
		w.inflight.Add(1)
		// Checked again now that inflight counts this write: pause waits
		// for inflight to drop to zero after setting paused.
		if w.paused.Load() {
			w.inflight.Add(-1)
			continue
		}
		w.attempts.Add(1)
		inst := fmt.Sprintf("d%d-%d", id, i)
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		_, err := n.API.Register(wctx, api.ServiceRegistration{ID: inst, Name: durService, Address: n.IP, Port: 1 + i%60000})
		cancel()
		w.inflight.Add(-1)
		if err == nil {
			w.mu.Lock()
			w.acked = append(w.acked, inst)
			w.mu.Unlock()
		} else if ctx.Err() == nil {
			// A refused or dead agent: back off briefly rather than spin.
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// pause stops new writes and waits for those in flight to end.
func (w *writers) pause(ctx context.Context) error {
	w.paused.Store(true)
	return poll(ctx, writeTimeout+2*time.Second, 5*time.Millisecond, func() (bool, string) {
		return w.inflight.Load() == 0, fmt.Sprintf("%d writes in flight", w.inflight.Load())
	})
}

func (w *writers) resume() { w.paused.Store(false) }

// RunDurability kills the Raft leader leaderKills times and a random node
// randomKills times, in a seeded order, each in the middle of writes,
// restarting each on its data dir, and checks that no acknowledged
// registration is lost.
func RunDurability(ctx context.Context, c *Cluster, seed int64, leaderKills, randomKills int) (*DurabilityResult, error) {
	rng := rand.New(rand.NewSource(seed))
	res := &DurabilityResult{}
	w := &writers{c: c, rng: rng}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// Two writers through the clients, two through a random server each
	// time (so writes land on followers and on the leader alike).
	var pickMu sync.Mutex
	wrng := rand.New(rand.NewSource(seed + 1))
	randomServer := func() *Node {
		pickMu.Lock()
		defer pickMu.Unlock()
		return c.Servers[wrng.Intn(len(c.Servers))]
	}
	picks := []func() *Node{
		func() *Node { return c.Clients[0] },
		func() *Node { return c.Clients[len(c.Clients)-1] },
		randomServer, randomServer,
	}
	for i, p := range picks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(wctx, i, p)
		}()
	}
	defer func() {
		stop()
		wg.Wait()
	}()

	kinds := make([]bool, 0, leaderKills+randomKills) // true: kill the leader
	for i := 0; i < leaderKills; i++ {
		kinds = append(kinds, true)
	}
	for i := 0; i < randomKills; i++ {
		kinds = append(kinds, false)
	}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })

	for k, killLeader := range kinds {
		// In the middle of writes: some acknowledged since the last step.
		before := w.count()
		if err := poll(ctx, 15*time.Second, 10*time.Millisecond, func() (bool, string) {
			return w.count() >= before+5, fmt.Sprintf("%d writes acknowledged since the last step", w.count()-before)
		}); err != nil {
			return res, fmt.Errorf("kill %d: writes do not flow: %w", k+1, err)
		}
		leader := c.Leader(ctx, c.Servers)
		if leader == nil {
			return res, fmt.Errorf("kill %d: servers do not agree on a leader", k+1)
		}
		victim := leader
		if killLeader {
			res.LeaderKills++
		} else {
			res.RandomKills++
			victim = c.Nodes[rng.Intn(len(c.Nodes))]
		}
		killed := time.Now()
		if err := c.Kill(victim); err != nil {
			return res, fmt.Errorf("kill %d: %w", k+1, err)
		}
		what := "random node"
		if killLeader {
			what = "leader"
		}
		if victim == leader {
			var survivors []*Node
			for _, s := range c.Servers {
				if s != victim {
					survivors = append(survivors, s)
				}
			}
			if err := poll(ctx, NewLeaderBound, 10*time.Millisecond, func() (bool, string) {
				l := c.Leader(ctx, survivors)
				return l != nil, "survivors do not agree on a leader"
			}); err != nil {
				res.Failures = append(res.Failures, fmt.Sprintf("kill %d (%s %s): no new leader: %v", k+1, what, victim.Name, err))
			} else {
				res.NewLeader = append(res.NewLeader, time.Since(killed))
			}
		}
		// Leave the node down a moment while writes go on, as a crash
		// does; the survivors' leader change is what matters here.
		restarted := time.Now()
		if err := c.Start(victim); err != nil {
			return res, fmt.Errorf("kill %d: restart: %w", k+1, err)
		}
		if err := w.pause(ctx); err != nil {
			return res, fmt.Errorf("kill %d: %w", k+1, err)
		}
		if err := c.WaitConverged(ctx, ConvergeBound); err != nil {
			res.Failures = append(res.Failures, fmt.Sprintf("kill %d (%s %s): no convergence within %v of the restart: %v", k+1, what, victim.Name, ConvergeBound, err))
			// Give it longer, so one slow step does not spoil the rest.
			if err := c.WaitConverged(ctx, 30*time.Second); err != nil {
				return res, fmt.Errorf("kill %d: still not converged: %w", k+1, err)
			}
		} else {
			res.Converge = append(res.Converge, time.Since(restarted))
		}
		c.logf("kill %d/%d: %s %s, new leader %v, converged %v after restart, %d acknowledged", k+1, len(kinds), what, victim.Name,
			last(res.NewLeader, victim == leader), last(res.Converge, true), w.count())
		w.resume()
	}
	if err := w.pause(ctx); err != nil {
		return res, err
	}
	stop()
	wg.Wait()
	w.mu.Lock()
	acked := append([]string(nil), w.acked...)
	w.mu.Unlock()
	res.Acked, res.Attempted = len(acked), int(w.attempts.Load())

	// Every acknowledged registration is in a consistent read.
	var list []api.Instance
	err := poll(ctx, 20*time.Second, 100*time.Millisecond, func() (bool, string) {
		for _, n := range c.Servers {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			l, _, err := n.API.Service(rctx, durService, false, "", &api.QueryOptions{Consistent: true})
			cancel()
			if err == nil {
				list = l
				return true, ""
			}
		}
		return false, "no consistent read succeeded"
	})
	if err != nil {
		return res, fmt.Errorf("final consistent read: %w", err)
	}
	have := map[string]bool{}
	for _, in := range list {
		have[in.ID] = true
	}
	for _, id := range acked {
		if !have[id] {
			res.Lost = append(res.Lost, id)
		}
	}
	return res, nil
}

func last(ds []time.Duration, ok bool) string {
	if !ok || len(ds) == 0 {
		return "-"
	}
	return ds[len(ds)-1].Round(time.Millisecond).String()
}
