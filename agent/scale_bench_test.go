package agent_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/election"
)

// BenchmarkRegisterScale registers BENCH_SCALE_INSTANCES (default 100,000)
// instances through one server's HTTP API (bolt data dir, default Raft
// settings, 16 concurrent writers, each instance a new id in one of 1,000
// services) and reports the rate of each 10,000-instance step, the last
// step's rate against the first's, the heap per instance, GET /v1/services,
// the snapshot's size and time, how long the server takes to be ready
// again after a restart with that registry, and the p99 of DNS SRV queries
// after each step. A registration (and a DNS answer) must cost the same
// whatever the registry's size. Run it with -benchtime 1x (make
// bench-scale; make bench-scale-long for 1,000,000).
func BenchmarkRegisterScale(b *testing.B) {
	total := 100000
	if v, err := strconv.Atoi(os.Getenv("BENCH_SCALE_INSTANCES")); err == nil && v >= 20000 {
		total = v - v%10000
	}
	for i := 0; i < b.N; i++ {
		registerScale(b, total)
	}
}

func registerScale(b *testing.B, total int) {
	const writers, step = 16, 10000
	cfg := agenttest.Config("server-0")
	rc := election.DefaultServerConfig()
	// To measure what snapshots cost as the registry grows: a fixed
	// threshold, or the size above which it follows the registry.
	if v, err := strconv.ParseUint(os.Getenv("BENCH_SCALE_SNAPSHOT_THRESHOLD"), 10, 64); err == nil && v > 0 {
		rc.SnapshotThreshold = v
	}
	if v, err := strconv.ParseUint(os.Getenv("BENCH_SCALE_SNAPSHOT_ADAPT_ABOVE"), 10, 64); err == nil && v > 0 {
		rc.SnapshotAdaptAbove = v
	}
	cfg.Raft = &rc
	cfg.Server, cfg.BootstrapExpect, cfg.DataDir = true, 1, b.TempDir()
	a := agenttest.Run(b, cfg)
	a.WaitReady(30 * time.Second)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: writers}}
	defer hc.CloseIdleConnections()

	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	base, baseRSS := heap(), rss(b)
	var next atomic.Int64
	// phase registers instances [from, to) and returns the rate.
	phase := func(from, to int64) float64 {
		next.Store(from)
		start := time.Now()
		var wg sync.WaitGroup
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					n := next.Add(1) - 1
					if n >= to {
						return
					}
					body := fmt.Sprintf(`{"id":"inst-%d","name":"svc-%d","address":"10.%d.%d.%d","port":%d,"tags":["v1"],"meta":{"zone":"z%d"}}`,
						n, n%1000, n>>16&255, n>>8&255, n&255, 1024+n%50000, n%3)
					req, _ := http.NewRequest(http.MethodPut, a.URL+"/v1/services", strings.NewReader(body))
					resp, err := hc.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body) // so the connection is reused
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("register %d: %d", n, resp.StatusCode)
						return
					}
				}
			}()
		}
		wg.Wait()
		return float64(to-from) / time.Since(start).Seconds()
	}
	b.ResetTimer()
	var rates, dnsP99 []string
	var first, last float64
	var lastDNS time.Duration
	for from := 0; from < total; from += step {
		r := phase(int64(from), int64(from+step))
		if from == 0 {
			first = r
		}
		last = r
		rates = append(rates, fmt.Sprintf("%.0f", r))
		lastDNS = srvP99(b, a.DNSAddr())
		dnsP99 = append(dnsP99, fmt.Sprintf("%.2f", float64(lastDNS.Microseconds())/1000))
	}
	b.StopTimer()
	perInstance := float64(heap()-base) / float64(total)
	rssPerInstance := float64(rss(b)-baseRSS) / float64(total)

	// GET /v1/services, the list of every service: median of 21.
	var lat []time.Duration
	for i := 0; i < 21; i++ {
		start := time.Now()
		resp, err := hc.Get(a.URL + "/v1/services")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		lat = append(lat, time.Since(start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })

	start := time.Now()
	var size countingWriter
	if err := a.FSM().WriteSnapshot(&size); err != nil {
		b.Fatal(err)
	}
	snapTime := time.Since(start)

	// Restart on the same data dir: ready (Raft log and snapshot replayed,
	// the local state compared with the registry) and every instance back.
	a.Stop()
	start = time.Now()
	a = agenttest.Run(b, cfg)
	a.WaitReady(5 * time.Minute)
	restart := time.Since(start)
	if n := a.FSM().Index(); n == 0 || len(a.FSM().NodeInstances(cfg.Name)) != total {
		b.Fatalf("after the restart: %d instances, want %d", len(a.FSM().NodeInstances(cfg.Name)), total)
	}
	a.Stop()

	suffix := fmt.Sprintf("%dk", total/1000)
	b.ReportMetric(first, "regs/s_0-10k")
	b.ReportMetric(last, "regs/s_last10k")
	b.ReportMetric(last/first, "ratio")
	b.ReportMetric(perInstance, "heapB/instance")
	b.ReportMetric(rssPerInstance, "rssB/instance")
	b.ReportMetric(float64(lastDNS.Microseconds())/1000, "srv_p99_ms")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "services_ms")
	b.ReportMetric(float64(size.n)/(1<<20), "snapshot_MiB")
	b.ReportMetric(float64(snapTime.Milliseconds()), "snapshot_ms")
	b.ReportMetric(restart.Seconds(), "restart_s")
	// Printed, not logged: a benchmark's log keeps only its first lines,
	// which the agent's own log fills.
	fmt.Printf("RegisterScale at %s: registrations/s per 10k step %s (last/first %.2f); DNS SRV p99 ms per step %s; heap %.0f B and RSS %.0f B per instance; GET /v1/services p50 %v; snapshot %.1f MiB in %v; restart ready in %v\n",
		suffix, strings.Join(rates, " "), last/first, strings.Join(dnsP99, " "), perInstance, rssPerInstance,
		lat[len(lat)/2], float64(size.n)/(1<<20), snapTime, restart.Round(time.Millisecond))
}

// srvP99 is the p99 of 500 SRV queries over UDP (EDNS0, 4 KiB, as a
// resolver asks), one after another, over the 1,000 services.
func srvP99(b *testing.B, addr string) time.Duration {
	c := &dns.Client{Timeout: 2 * time.Second, UDPSize: 4096}
	lat := make([]time.Duration, 0, 500)
	for i := 0; i < 500; i++ {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("svc-%d.service.sidecar.", i*37%1000), dns.TypeSRV)
		m.SetEdns0(4096, false)
		start := time.Now()
		in, _, err := c.Exchange(m, addr)
		if err != nil {
			b.Fatalf("SRV query: %v", err)
		}
		if in.Rcode != dns.RcodeSuccess || len(in.Answer) == 0 {
			b.Fatalf("SRV query: %s with %d answers", dns.RcodeToString[in.Rcode], len(in.Answer))
		}
		lat = append(lat, time.Since(start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[len(lat)*99/100]
}

// rss is this process's resident memory, after the heap's free pages went
// back to the system, so it counts what the registry holds.
func rss(b *testing.B) uint64 {
	runtime.GC()
	debug.FreeOSMemory()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }
