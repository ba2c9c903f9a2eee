package main

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// attemptTimeout is the client behaviour both systems get: each attempt of
// an operation may take this long, and a failed or timed-out attempt is
// retried at once.
const attemptTimeout = 200 * time.Millisecond

// retry runs f with a fresh attempt deadline until it succeeds or bound has
// passed; it returns the last error then.
func retry(bound time.Duration, f func(ctx context.Context) error) error {
	return retryEach(bound, attemptTimeout, f)
}

// retryEach is retry with attempts of the given length.
func retryEach(bound, attempt time.Duration, f func(ctx context.Context) error) error {
	deadline := time.Now().Add(bound)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), attempt)
		err := f(ctx)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}

// throughput runs n sequential writers for warmup+dur; op(w, i) is writer
// w's i-th operation. It returns the operations acknowledged per second
// during dur and the failed attempts over the whole run.
func throughput(n int, warmup, dur time.Duration, op func(w, i int) func(ctx context.Context) error) (rate float64, failed int64) {
	start := time.Now()
	from, to := start.Add(warmup), start.Add(warmup+dur)
	var count, fails atomic.Int64
	var kinds errorKinds
	var wg sync.WaitGroup
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(to); i++ {
				f := op(w, i)
				err := retry(5*time.Second, func(ctx context.Context) error {
					err := f(ctx)
					if err != nil {
						fails.Add(1)
						kinds.add(err)
					}
					return err
				})
				if now := time.Now(); err == nil && now.After(from) && now.Before(to) {
					count.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	kinds.log()
	return float64(count.Load()) / dur.Seconds(), fails.Load()
}

// gapWriter is one sequential writer recording when each write was
// acknowledged.
type gapWriter struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	acks []time.Time
}

func startGapWriter(op func(i int) func(ctx context.Context) error) *gapWriter {
	g := &gapWriter{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(g.done)
		for i := 0; ; i++ {
			select {
			case <-g.stop:
				return
			default:
			}
			f := op(i)
			for {
				ctx, cancel := context.WithTimeout(context.Background(), attemptTimeout)
				err := f(ctx)
				cancel()
				if err == nil {
					g.mu.Lock()
					g.acks = append(g.acks, time.Now())
					g.mu.Unlock()
					break
				}
				select {
				case <-g.stop:
					return
				default:
				}
			}
		}
	}()
	return g
}

func (g *gapWriter) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.acks)
}

// finish stops the writer and returns the longest time between two
// acknowledgements, or from the last one to the end when none followed
// (then complete is false).
func (g *gapWriter) finish() (gap time.Duration, complete bool) {
	end := time.Now()
	close(g.stop)
	<-g.done
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := 1; i < len(g.acks); i++ {
		if d := g.acks[i].Sub(g.acks[i-1]); d > gap {
			gap = d
		}
	}
	if len(g.acks) > 0 {
		if d := end.Sub(g.acks[len(g.acks)-1]); d > gap {
			return d, false
		}
	}
	return gap, len(g.acks) > 0
}

// errorKinds counts failed attempts by their message, digits masked, so
// that a trial's failures say what they were.
type errorKinds struct {
	mu sync.Mutex
	n  map[string]int
}

func (k *errorKinds) add(err error) {
	msg := []byte(err.Error())
	if len(msg) > 120 {
		msg = msg[:120]
	}
	for i, c := range msg {
		if c >= '0' && c <= '9' {
			msg[i] = '#'
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.n == nil {
		k.n = map[string]int{}
	}
	k.n[string(msg)]++
}

// log prints the three most frequent kinds.
func (k *errorKinds) log() {
	type kind struct {
		msg string
		n   int
	}
	var all []kind
	for m, n := range k.n {
		all = append(all, kind{m, n})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n })
	for _, e := range all[:min(3, len(all))] {
		logf("  failed attempts: %d × %s", e.n, e.msg)
	}
}
