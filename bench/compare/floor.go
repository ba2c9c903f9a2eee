package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidecarhq/sidecar/api"
)

// noopHTTP (compare noop-http ADDR) answers every request as an agent
// answers a registration, having done nothing: what serving the request
// alone costs, the floor under any agent's HTTP API.
func noopHTTP(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: compare noop-http ADDR")
		return 2
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "noop-http:", err)
		return 1
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var reg api.ServiceRegistration
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&reg); err != nil {
			http.Error(w, `{"error":"bad registration"}`, http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(api.RegisterResponse{ID: reg.ID, Index: 1})
	})
	if err := http.Serve(ln, h); err != nil {
		fmt.Fprintln(os.Stderr, "noop-http:", err)
		return 1
	}
	return 0
}

// httpFloor (BENCH_SECTIONS=floor) measures the CPU a Go HTTP server on
// this machine spends per registration request that it answers without
// doing anything, at the request rates of BENCH_FLOOR_RATES (per second,
// 0: as fast as 8 writers go; default 600,1200,0). A client agent serves
// such a request for every write through it, so this is the least a write
// through a client agent can cost beyond a write through the leader.
func (b *bench) httpFloor() {
	self, err := os.Executable()
	if err != nil {
		b.fail("floor", err)
		return
	}
	rates := []int{600, 1200, 0}
	if v := os.Getenv("BENCH_FLOOR_RATES"); v != "" {
		rates = nil
		for _, f := range strings.Split(v, ",") {
			r, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || r < 0 {
				b.fail("floor", fmt.Errorf("BENCH_FLOOR_RATES: %q is not a rate", f))
				return
			}
			rates = append(rates, r)
		}
	}
	for _, rate := range rates {
		addr, err := b.sup.addr()
		if err != nil {
			b.fail("floor", err)
			return
		}
		p, err := b.sup.start("noop-http", self, "noop-http", addr)
		if err != nil {
			b.fail("floor", err)
			return
		}
		perReq, got, err := measureFloor(addr, p.pid(), rate, b.cfg.seconds)
		p.stop(2 * time.Second)
		if err != nil {
			b.fail("floor", err)
			return
		}
		want := "as fast as 8 writers go"
		if rate > 0 {
			want = fmt.Sprintf("paced at %d/s", rate)
		}
		logf("floor: a no-op HTTP registration endpoint, %s: %.0f requests/s, %.0f µs of CPU per request", want, got, perReq)
	}
}

// measureFloor runs 8 writers against the no-op server at addr (process
// pid) for dur, paced to rate requests/s in all (0: unpaced), and returns
// the server's CPU per request in µs and the rate reached.
func measureFloor(addr string, pid, rate int, dur time.Duration) (perReq, got float64, err error) {
	const writers = 8
	clients := make([]*api.Client, writers)
	for i := range clients {
		if clients[i], err = api.NewClient(addr); err != nil {
			return 0, 0, err
		}
		defer clients[i].CloseIdleConnections()
	}
	// The server is up once a registration is answered.
	if err := retry(10*time.Second, func(ctx context.Context) error {
		_, err := clients[0].Register(ctx, registration("floor-0", "floor", 1, false))
		return err
	}); err != nil {
		return 0, 0, fmt.Errorf("no-op server at %s: %w", addr, err)
	}
	var count atomic.Int64
	start := time.Now()
	cpu0 := cpuSeconds(pid)
	end := start.Add(dur)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			next := time.Now()
			for k := 0; time.Now().Before(end); k++ {
				if rate > 0 {
					next = next.Add(writers * time.Second / time.Duration(rate))
					time.Sleep(time.Until(next))
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, err := clients[w].Register(ctx, registration(fmt.Sprintf("floor-%d-%d", w, k%idsPerWriter), fmt.Sprintf("floor-%d", w), 1+k%60000, false))
				cancel()
				if err == nil {
					count.Add(1)
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	n := count.Load()
	if n == 0 {
		return 0, 0, fmt.Errorf("no-op server at %s answered nothing in %v", addr, dur)
	}
	return (cpuSeconds(pid) - cpu0) / float64(n) * 1e6, float64(n) / el, nil
}
