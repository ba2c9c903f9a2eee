package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cpuSeconds is the user+system CPU a process used so far (Linux).
func cpuSeconds(b *testing.B, pid int) float64 {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Skip("no /proc: ", err)
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // clock ticks; USER_HZ is 100 on Linux
}

// BenchmarkBlockingQueries10k: a dev agent (as a process) with 10,000
// blocking queries held open on 10,000 distinct services while 100
// registrations a second go to other services for 10 s; it reports the
// agent's CPU as a share of one core. Unrelated writes must not wake the
// blocked queries: they cost memory, not CPU.
func BenchmarkBlockingQueries10k(b *testing.B) {
	const queries, writesPerSec, window = 10000, 100, 10 * time.Second
	for i := 0; i < b.N; i++ {
		httpAddr := freeAddr(b)
		p := start(b, "agent", "--dev", "--name", "dev", "--http-addr", httpAddr, "--dns-addr", freeAddr(b),
			"--bind-addr", freeAddr(b), "--raft-addr", freeAddr(b), "--log-level", "warn")
		url := "http://" + httpAddr
		waitFor(b, 20*time.Second, "dev agent ready", func() bool {
			resp, err := http.Get(url + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
		hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 0}}
		for n := 0; n < queries; n++ {
			if code, body := call(b, "PUT", url+"/v1/services", fmt.Sprintf(`{"id":"q-%d","name":"q%d","port":80}`, n, n)); code != 200 {
				b.Fatalf("register: %d %s", code, body)
			}
		}
		// One connection per blocked query, as 10,000 watchers would hold.
		var blocked, woken atomic.Int64
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for n := 0; n < queries; n++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// From 25 loopback addresses: watchers are many clients, and
				// one address may hold 512 connections.
				d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(2+n%25))}}
				tr := &http.Transport{DisableKeepAlives: true, DialContext: d.DialContext}
				defer tr.CloseIdleConnections()
				c := &http.Client{Transport: tr}
				resp, err := c.Get(fmt.Sprintf("%s/v1/services/q%d", url, n))
				if err != nil {
					return
				}
				idx := resp.Header.Get("X-Sidecar-Index")
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				first := true
				for {
					// As a watcher does: block from the last index, again
					// whenever woken.
					req, _ := http.NewRequest("GET", fmt.Sprintf("%s/v1/services/q%d?index=%s&wait=60s", url, n, idx), nil)
					ctx, cancel := context.WithCancel(context.Background())
					go func() {
						select {
						case <-stop:
						case <-ctx.Done():
						}
						cancel()
					}()
					if first {
						blocked.Add(1)
						first = false
					}
					resp, err := c.Do(req.WithContext(ctx))
					if err != nil {
						cancel()
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					cancel()
					select {
					case <-stop:
						return
					default:
					}
					woken.Add(1)
					idx = resp.Header.Get("X-Sidecar-Index")
				}
			}()
		}
		waitFor(b, 60*time.Second, "all queries sent", func() bool { return blocked.Load() == queries })
		time.Sleep(2 * time.Second) // let the last requests reach the agent and block

		before, t0 := cpuSeconds(b, p.cmd.Process.Pid), time.Now()
		tick := time.NewTicker(time.Second / writesPerSec)
		for w := 0; time.Since(t0) < window; w++ {
			<-tick.C
			call(b, "PUT", url+"/v1/services", fmt.Sprintf(`{"id":"w-%d","name":"writer%d","port":80}`, w%1000, w%100))
		}
		tick.Stop()
		used := cpuSeconds(b, p.cmd.Process.Pid) - before
		elapsed := time.Since(t0).Seconds()
		close(stop)
		wg.Wait()
		hc.CloseIdleConnections()
		p.kill9()
		b.ReportMetric(100*used/elapsed, "cpu%_of_core")
		b.ReportMetric(float64(woken.Load()), "woken")
		b.Logf("%d blocked queries, %d writes/s to other services for %v: agent CPU %.1f%% of a core, %d queries woken",
			queries, writesPerSec, window, 100*used/elapsed, woken.Load())
	}
}
