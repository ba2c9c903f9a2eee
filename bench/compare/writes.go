package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidecarhq/sidecar/api"
)

// idsPerWriter is how many instance ids (etcd: keys) each writer cycles
// over, as etcd's own benchmark does: with 64 writers the registry holds up
// to 64,000 instances, as a real one does.
const idsPerWriter = 1000

// writeTarget is one way of writing to a sidecar cluster: n writers spread
// round-robin over agents.
type writeTarget struct {
	what   string // for the log: "servers", "the leader", ...
	c      *sidecarCluster
	agents []*scNode

	clients []*api.Client
	cursor  []int // per writer: the next operation's number, across trials
}

// writeTrials runs b.cfg.trials rounds of n concurrent sequential writers;
// a round runs each target in turn and then etcd (when withEtcd), so that
// the systems alternate and share the machine's noise. Writer w's k-th
// operation writes id k mod idsPerWriter of its own (sidecar: tp-w-ID,
// registered with a TTL check when check is set; etcd: /bench/tp/w/ID, a
// put, or a lease grant + put when check is set), counted on from round to
// round. It returns the rates per target and etcd's. Nothing is cleaned
// up: see endWriteRow.
func (b *bench) writeTrials(n int, check bool, targets []*writeTarget, withEtcd bool) (sc [][]float64, et []float64, err error) {
	for _, t := range targets {
		if t.clients, err = t.c.writers(n, t.agents...); err != nil {
			return nil, nil, err
		}
		t.cursor = make([]int, n)
		defer func() {
			for _, c := range t.clients {
				c.CloseIdleConnections()
			}
		}()
	}
	var etw *etcdWriters
	var etCursor []int
	if withEtcd {
		if etw, err = b.et.writers(n); err != nil {
			return nil, nil, err
		}
		defer etw.close()
		etCursor = make([]int, n)
	}
	kind := "write"
	if check {
		kind = "registration"
	}
	sc = make([][]float64, len(targets))
	for trial := 0; trial < b.cfg.trials; trial++ {
		for ti, t := range targets {
			rate, failed := throughput(n, 500*time.Millisecond, b.cfg.seconds, func(w, _ int) func(ctx context.Context) error {
				k := t.cursor[w]
				t.cursor[w]++
				reg := registration(fmt.Sprintf("tp-%d-%d", w, k%idsPerWriter), fmt.Sprintf("tp-%d", w), 1+k%60000, check)
				cl := t.clients[w]
				return func(ctx context.Context) error { _, err := cl.Register(ctx, reg); return err }
			})
			logf("%ssidecar %s throughput through %s, %d clients, trial %d: %.0f/s (%d failed attempts)", t.c.opts.label, kind, t.what, n, trial+1, rate, failed)
			sc[ti] = append(sc[ti], rate)
		}
		if !withEtcd {
			continue
		}
		rate, failed := throughput(n, 500*time.Millisecond, b.cfg.seconds, func(w, _ int) func(ctx context.Context) error {
			k := etCursor[w]
			etCursor[w]++
			id := k % idsPerWriter
			key := fmt.Sprintf("/bench/tp/%d/%d", w, id)
			val := fmt.Sprintf(`{"id":"tp-%d-%d","name":"tp-%d","address":"10.0.0.1","port":%d}`, w, id, w, 1+k%60000)
			cli := etw.clis[w]
			if check {
				return etw.register(cli, key, val)
			}
			return func(ctx context.Context) error { _, err := cli.Put(ctx, key, val); return err }
		})
		logf("etcd %s throughput, %d clients, trial %d: %.0f/s (%d failed attempts)", kind, n, trial+1, rate, failed)
		et = append(et, rate)
	}
	if withEtcd {
		// The next row starts from the same etcd: no keys, no leases.
		if err := etw.cleanup("/bench/tp/"); err != nil {
			return sc, et, fmt.Errorf("etcd cleanup: %w", err)
		}
	}
	return sc, et, nil
}

// resetAll empties the given sidecar clusters at once (reset: stop, remove
// the data dirs, start again), so that the next row starts from an empty
// registry whatever this one wrote.
func resetAll(cs ...*sidecarCluster) error {
	t0 := time.Now()
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = c.reset() }()
	}
	wg.Wait()
	logf("emptied %d sidecar cluster(s) in %v", len(cs), time.Since(t0).Round(time.Millisecond))
	return errors.Join(errs...)
}

// preloadAttempt bounds one attempt of a pre-load write.
const preloadAttempt = 5 * time.Second

// preload registers count instances without checks through the cluster's
// servers (64 loaders, round-robin) and puts as many keys, each on a lease
// of its own, into etcd; each within bound. Services have 50 instances
// each.
func (b *bench) preload(count int, bound time.Duration) error {
	const loaders = 64
	scw, err := b.sc.writers(loaders)
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range scw {
			c.CloseIdleConnections()
		}
	}()
	etw, err := b.et.writers(loaders)
	if err != nil {
		return err
	}
	defer etw.close()
	load := func(system string, op func(w, k int) func(ctx context.Context) error) error {
		t0 := time.Now()
		var loaded, failedAttempts, slowest atomic.Int64 // slowest: ns
		deadline := t0.Add(bound)
		errs := make([]error, loaders)
		var wg sync.WaitGroup
		for w := 0; w < loaders; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := w; k < count; k += loaders {
					if time.Now().After(deadline) {
						errs[w] = fmt.Errorf("%s: %d instances not loaded within %v", system, count, bound)
						return
					}
					// Not measured, so not the rows' 200 ms attempts:
					// a slow write is waited for rather than sent again
					// on top of itself.
					f := op(w, k)
					t1 := time.Now()
					err := retryEach(time.Minute, preloadAttempt, func(ctx context.Context) error {
						err := f(ctx)
						if err != nil {
							failedAttempts.Add(1)
						}
						return err
					})
					if d := int64(time.Since(t1)); err == nil && d > slowest.Load() {
						slowest.Store(d) // racy max: a log figure only
					}
					if err != nil {
						errs[w] = fmt.Errorf("%s: instance %d: %w", system, k, err)
						return
					}
					if done := loaded.Add(1); done%10000 == 0 {
						logf("preload: %s: %d instances after %v; slowest write so far %v, %d failed attempts", system, done,
							time.Since(t0).Round(time.Millisecond), time.Duration(slowest.Load()).Round(time.Millisecond), failedAttempts.Load())
					}
				}
			}()
		}
		wg.Wait()
		failed := 0
		var first error
		for _, err := range errs {
			if err != nil {
				if first == nil {
					first = err
				}
				failed++
			}
		}
		if first != nil {
			return fmt.Errorf("%d of %d loaders failed after %d instances (%v), the first: %w", failed, loaders, loaded.Load(), time.Since(t0).Round(time.Millisecond), first)
		}
		logf("preload: %s holds %d more instances after %v", system, count, time.Since(t0).Round(time.Millisecond))
		return nil
	}
	// Both systems load at once: the load is not measured.
	var scErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		scErr = load("sidecar", func(w, k int) func(ctx context.Context) error {
			reg := registration(fmt.Sprintf("pre-%d", k), fmt.Sprintf("pre-%d", k/50), 1+k%60000, false)
			return func(ctx context.Context) error { _, err := scw[w].Register(ctx, reg); return err }
		})
	}()
	etErr := load("etcd", func(w, k int) func(ctx context.Context) error {
		key := fmt.Sprintf("/bench/pre/%d", k)
		val := fmt.Sprintf(`{"id":"pre-%d","name":"pre-%d","address":"10.0.0.1","port":%d}`, k, k/50, 1+k%60000)
		return etw.register(etw.clis[w], key, val)
	})
	wg.Wait()
	return errors.Join(scErr, etErr)
}
