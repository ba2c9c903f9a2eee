package inproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/chaos/checker"
	"github.com/sidecarhq/sidecar/fsm"
)

// Config is one run.
type Config struct {
	Seed     int64
	Duration time.Duration
	// Servers is 3 or 5; 0 draws it from the seed.
	Servers int
	// Clients is the number of sequential clients (default 6).
	Clients int
	// Dir holds the servers' data dirs (default: a new temporary dir).
	Dir string
	// OutDir receives porcupine visualizations on failure.
	OutDir string
	// Logger receives the servers' logs (default: discarded).
	Logger *slog.Logger
	// Logf reports progress (default: discarded).
	Logf func(format string, args ...any)
	// Transport is what Raft crosses under the network's faults:
	// TransportTLS (default), TransportTCP or TransportInmem.
	Transport string
	// NoACL runs the clients without tokens. By default each client
	// writes with an ACL token of its own (made at setup), so that every
	// lease, lock and candidacy is owned and Apply checks the ownership of
	// every use under the faults (CHAOS_ACL=0 turns it off).
	NoACL bool
	// StopOnAnomaly ends the clients' and the faults' time as soon as the
	// history recorded so far shows an anomaly (checker.Recorder.Early,
	// every second): a run with a planted bug has then shown it, and the
	// rest of its length would only cost time. Healing, the final reads
	// and the whole check follow as usual; the wait for convergence is
	// shorter (a planted bug may prevent it, and the run has failed
	// already).
	StopOnAnomaly bool
}

// Convergence after healing is awaited this long, or stoppedConvergence
// after a run stopped on an anomaly.
const (
	convergence        = 20 * time.Second
	stoppedConvergence = 5 * time.Second
)

// finalReads bounds the reads of every key after healing, so that a
// cluster a planted bug left without a working leader cannot hold the run
// up key after key.
const finalReads = 30 * time.Second

// Result is what a run found.
type Result struct {
	Seed        int64
	Servers     int
	Transport   string
	Timings     Timings
	Report      *checker.Report
	Convergence time.Duration
	// LeaderRecovery lists, for each crash of the leader, the time until
	// another server led.
	LeaderRecovery []time.Duration
	// FirstAnomaly is when, after the clients started, the history first
	// showed an anomaly while they ran (StopOnAnomaly; 0: none showed).
	FirstAnomaly time.Duration
	Elapsed      time.Duration
}

type run struct {
	cfg   Config
	rng   *rand.Rand
	c     *Cluster
	net   *Network
	rec   *checker.Recorder
	epoch time.Duration

	bg       sync.WaitGroup
	mu       sync.Mutex
	keys     map[string]bool
	recovery []time.Duration
	first    time.Duration // FirstAnomaly
	// handovers feeds each server's watchHandovers (set before the
	// clients start).
	handovers []chan checker.Grant
}

func (r *run) useKey(k string) {
	r.mu.Lock()
	r.keys[k] = true
	r.mu.Unlock()
}

// Run runs one campaign: it starts the servers, runs the clients and the
// faults for cfg.Duration, heals everything, waits for convergence, reads
// every key once more and checks the history.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	start := time.Now()
	if cfg.Clients <= 0 {
		cfg.Clients = 6
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Transport == "" {
		cfg.Transport = TransportTLS
	}
	rng := rand.New(rand.NewSource(cfg.Seed))
	if cfg.Servers == 0 {
		cfg.Servers = []int{3, 5}[rng.Intn(2)]
	}
	hb := time.Duration(80+rng.Intn(120)) * time.Millisecond
	tm := Timings{
		Heartbeat: hb,
		// Below the heartbeat timeout, as the lease guarantee needs.
		LeaderLease:       hb * time.Duration(3+rng.Intn(3)) / 10,
		Commit:            time.Duration(5+rng.Intn(15)) * time.Millisecond,
		SnapshotThreshold: uint64(16 + rng.Intn(112)),
		TrailingLogs:      uint64(8 + rng.Intn(56)),
		SnapshotInterval:  time.Duration(200+rng.Intn(800)) * time.Millisecond,
	}
	dir := cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "sidecar-chaos-")
		if err != nil {
			return nil, fmt.Errorf("data dir: %w", err)
		}
		dir = d
		defer os.RemoveAll(d)
	}
	net := NewNetwork(rng.Int63())
	c, err := NewCluster(cfg.Servers, filepath.Join(dir, fmt.Sprintf("run-%d", cfg.Seed)), net, tm, cfg.Logger, cfg.Transport)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	r := &run{cfg: cfg, rng: rng, c: c, net: net, rec: checker.NewRecorder(), epoch: 8 * time.Second, keys: map[string]bool{}}
	cfg.Logf("seed %d: %d servers over %s, heartbeat %v, leader lease %v, commit %v, snapshot every %d entries (trailing %d, checked every %v)",
		cfg.Seed, cfg.Servers, cfg.Transport, tm.Heartbeat, tm.LeaderLease, tm.Commit, tm.SnapshotThreshold, tm.TrailingLogs, tm.SnapshotInterval)
	if err := r.waitLeader(ctx, 15*time.Second); err != nil {
		return nil, err
	}
	if err := r.setup(ctx); err != nil {
		return nil, err
	}

	obsCtx, stopObs := context.WithCancel(ctx)
	var obsWG sync.WaitGroup
	obsWG.Add(1)
	go func() { defer obsWG.Done(); r.observeLeases(obsCtx) }()

	wctx, stop := context.WithTimeout(ctx, cfg.Duration)
	defer stop()
	var wg sync.WaitGroup
	clients := make([]*client, cfg.Clients)
	for i := range clients {
		clients[i] = &client{id: i, r: r, rng: rand.New(rand.NewSource(rng.Int63())),
			ttl: time.Second + time.Duration(rng.Int63n(int64(time.Second)))}
		if !cfg.NoACL {
			clients[i].caller = &acl.Caller{TokenID: clientToken(i)}
		}
	}
	nemRng := rand.New(rand.NewSource(rng.Int63()))
	wg.Add(1)
	go func() { defer wg.Done(); r.nemesis(wctx, nemRng) }()
	if cfg.StopOnAnomaly {
		wg.Add(1)
		go func() { defer wg.Done(); r.stopOnAnomaly(wctx, stop) }()
	}
	var cwg sync.WaitGroup
	for i := 0; i < cfg.Servers; i++ {
		ch := make(chan checker.Grant, 4)
		r.handovers = append(r.handovers, ch)
		cwg.Add(1)
		go func() { defer cwg.Done(); r.watchHandovers(wctx, i, ch) }()
	}
	for _, cl := range clients {
		cwg.Add(1)
		go func() { defer cwg.Done(); cl.loop(wctx) }()
	}
	wg.Wait() // the nemesis healed everything on its way out
	cwg.Wait()
	r.bg.Wait()

	// Convergence: every server up with the same registry.
	healStart := time.Now()
	res := &Result{Seed: cfg.Seed, Servers: cfg.Servers, Transport: cfg.Transport, Timings: tm}
	converged := false
	wait := convergence
	r.mu.Lock()
	res.FirstAnomaly = r.first
	r.mu.Unlock()
	if res.FirstAnomaly > 0 {
		wait = stoppedConvergence
	}
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ok, _ := c.Converged(); ok && c.Leader() >= 0 {
			converged = true
			break
		}
	}
	res.Convergence = time.Since(healStart)
	if !converged {
		_, digests := c.Converged()
		r.rec.Anomaly("no convergence within %v after healing: digests %v", wait, digests)
	}
	// Every key read once more, through a checker client.
	keys := make([]string, 0, len(r.keys))
	for k := range r.keys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if l := c.Leader(); l >= 0 {
		b := &backend{c: c, home: l, rec: r.rec, readVia: -1}
		end := time.Now().Add(finalReads)
		for n, k := range keys {
			if time.Now().After(end) {
				cfg.Logf("final reads: %d of %d keys left unread after %v", len(keys)-n, len(keys), finalReads)
				break
			}
			for i := 0; i < 20 && time.Now().Before(end) && !r.read(ctx, cfg.Clients, b, k); i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
		for _, h := range c.DeadHolds(l) {
			r.rec.Anomaly("%s", h)
		}
	}
	stopObs()
	obsWG.Wait()

	out := cfg.OutDir
	if out == "" {
		out = filepath.Join(os.TempDir(), fmt.Sprintf("sidecar-chaos-%d", cfg.Seed))
	}
	res.Report = r.rec.Check(checker.Options{OutDir: out, Timeout: 5 * time.Second})
	if len(res.Report.Anomalies) > 0 {
		// The whole history beside the visualizations, to read each anomaly
		// in its context (a planted bug's run too).
		if err := os.MkdirAll(out, 0o755); err == nil {
			if f, err := os.Create(filepath.Join(out, "history.json")); err == nil {
				_ = r.rec.WriteHistory(f)
				f.Close()
				cfg.Logf("history: %s", f.Name())
			}
		}
	}
	r.mu.Lock()
	res.LeaderRecovery = append(res.LeaderRecovery, r.recovery...)
	r.mu.Unlock()
	res.Elapsed = time.Since(start)
	return res, nil
}

// stopOnAnomaly calls stop once the history so far shows an anomaly.
func (r *run) stopOnAnomaly(ctx context.Context, stop func()) {
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if a := r.rec.Early(); len(a) > 0 {
			d := time.Since(start)
			r.mu.Lock()
			r.first = d
			r.mu.Unlock()
			r.cfg.Logf("anomaly after %v, clients and faults stop: %s", d.Round(time.Millisecond), a[0])
			stop()
			return
		}
	}
}

func (r *run) waitLeader(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if r.c.Leader() >= 0 {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("chaos: no leader within %v", timeout)
}

// setup registers the node that owns the clients' instances.
func (r *run) setup(ctx context.Context) error {
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		l := r.c.Leader()
		if l < 0 {
			continue
		}
		s, _ := r.c.Server(l)
		if s == nil {
			continue
		}
		if _, err := s.Apply(ctx, &fsm.RegisterNode{Name: regNode, Address: "127.0.0.1"}); err != nil {
			continue
		}
		if r.cfg.NoACL {
			return nil
		}
		ok := true
		for i := 0; i < r.cfg.Clients && ok; i++ {
			id := clientToken(i)
			_, err := s.Apply(ctx, &fsm.ACLSetToken{Token: fsm.ACLToken{ID: id, SecretHash: acl.HashSecret(id + "-secret"), Description: "chaos client",
				Rules: []byte(`{"lock":"write","election":"write","lease":"write","service":"write"}`)}})
			ok = err == nil || errors.Is(err, fsm.ErrTokenExists)
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("chaos: register node %q: no leader took it", regNode)
}

// clientToken is the ID of client i's ACL token.
func clientToken(i int) string { return fmt.Sprintf("chaos-client-%d", i) }

// observeLeases watches every server's registry and records when a lease
// is first seen gone.
func (r *run) observeLeases(ctx context.Context) {
	type key struct{ srv, gen int }
	prev := map[key]map[string]bool{}
	for ctx.Err() == nil {
		for i := 0; i < r.c.Size(); i++ {
			s, gen := r.c.Server(i)
			if s == nil {
				continue
			}
			now := r.rec.Now()
			cur := map[string]bool{}
			for _, l := range s.FSM().Leases() {
				cur[l.ID] = true
			}
			k := key{i, gen}
			for id := range prev[k] {
				if !cur[id] {
					r.rec.LeaseGone(id, r.c.Name(i), now)
				}
			}
			prev[k] = cur
		}
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Millisecond):
		}
	}
}
