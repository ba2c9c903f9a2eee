package agent_test

import (
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/election"
)

// BenchmarkRegisterScale registers 60,000 instances through one server's
// HTTP API (bolt data dir, default Raft settings, 16 concurrent writers,
// each instance a new id in one of 1,000 services) and reports the rate
// over the first 10,000 and over 40,000-60,000, their ratio, and the heap
// per instance at 60,000. A registration must cost the agent the same
// whatever the registry's size. Run it with -benchtime 1x (make
// bench-scale).
func BenchmarkRegisterScale(b *testing.B) {
	for i := 0; i < b.N; i++ {
		registerScale(b)
	}
}

func registerScale(b *testing.B) {
	const writers, total = 16, 60000
	cfg := agenttest.Config("server-0")
	rc := election.DefaultServerConfig()
	cfg.Raft = &rc
	cfg.Server, cfg.BootstrapExpect, cfg.DataDir = true, 1, b.TempDir()
	a := agenttest.Run(b, cfg)
	a.WaitReady(30 * time.Second)
	defer a.Stop()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: writers}}
	defer hc.CloseIdleConnections()

	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	base := heap()
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
	early := phase(0, 10000)
	phase(10000, 40000)
	late := phase(40000, total)
	b.StopTimer()
	perInstance := float64(heap()-base) / total
	b.ReportMetric(early, "regs/s_0-10k")
	b.ReportMetric(late, "regs/s_40k-60k")
	b.ReportMetric(late/early, "ratio")
	b.ReportMetric(perInstance, "heapB/instance")
	b.Logf("registrations/s: %.0f at 0-10k, %.0f at 40k-60k (%.2fx); heap %.0f B per instance at %d",
		early, late, late/early, perInstance, total)
}
