package agent_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/election"
)

// BenchmarkCluster_writesThroughLeader: three servers in this process,
// each with a data dir (local state and Raft log on disk, default Raft
// settings), 1, 16 and 64 writers registering through the Raft leader's
// HTTP API, each cycling over 1,000 ids of its own. It measures the whole write path
// of one machine's CPU and disk (HTTP, local state, Raft log, replication,
// apply), so a change to any of them shows here; run it beside the same
// benchmark of another commit for a ratio (the disk's speed varies).
func BenchmarkCluster_writesThroughLeader(b *testing.B) {
	nodes := benchCluster(b)
	leader := benchLeader(b, nodes)
	benchWriters(b, leader, nodes)
}

// BenchmarkCluster_writesThroughClient is the same through a client agent
// (its own local state on disk, its writes sent to the servers over RPC).
func BenchmarkCluster_writesThroughClient(b *testing.B) {
	nodes := benchCluster(b)
	cl := agenttest.Join(b, nodes[0], "client-0", false, func(c *agent.Config) {
		c.DataDir, c.HTTPWriteRate = b.TempDir(), -1
	})
	cl.WaitReady(30 * time.Second)
	benchWriters(b, cl, nodes)
}

// benchWriters runs benchWrites with 1, 16 and 64 writers: one writer
// shows a write's fixed costs (each round of the pipeline carries one
// write), 64 what batching makes of them. It also reports the barriers the
// leader among servers appended per write (election/nudge.go).
func benchWriters(b *testing.B, a *agenttest.Agent, servers []*agenttest.Agent) {
	for _, n := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("writers=%d", n), func(b *testing.B) {
			before := nudges(b, servers)
			benchWrites(b, a, n)
			b.ReportMetric((nudges(b, servers)-before)/float64(b.N), "nudges/write")
		})
	}
}

// nudges counts the barriers the servers appended to tell followers of a
// commit (election/nudge.go).
func nudges(b *testing.B, servers []*agenttest.Agent) (n float64) {
	for _, s := range servers {
		v, _ := strconv.ParseFloat(metric(b, s, "sidecar_raft_commit_nudges_total"), 64)
		n += v
	}
	return n
}

// BenchmarkCluster_registrationsWithTTLCheck is BenchmarkCluster_writesThroughLeader
// with a TTL check in every registration, as make bench's registration
// row: the difference is what a check costs on the write path.
func BenchmarkCluster_registrationsWithTTLCheck(b *testing.B) {
	nodes := benchCluster(b)
	leader := benchLeader(b, nodes)
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("writers=%d", n), func(b *testing.B) {
			benchRegistrations(b, leader, n, `[{"type":"ttl","ttl":"10s"}]`)
		})
	}
}

// benchLeader waits for one of nodes to lead and returns it.
func benchLeader(b *testing.B, nodes []*agenttest.Agent) (leader *agenttest.Agent) {
	agenttest.WaitFor(b, 10*time.Second, "a leader", func() bool {
		for _, n := range nodes {
			if n.Server().IsLeader() {
				leader = n
				return true
			}
		}
		return false
	})
	return leader
}

func benchCluster(b *testing.B) []*agenttest.Agent {
	return agenttest.Cluster(b, 3, func(c *agent.Config) {
		rc := election.DefaultServerConfig()
		c.Raft = &rc
		c.HTTPWriteRate = -1 // every writer is 127.0.0.1: one client address
	})
}

// benchWrites runs b.N registrations through a's HTTP API: writers
// concurrent writers, each cycling over 1,000 ids of its own.
func benchWrites(b *testing.B, a *agenttest.Agent, writers int) {
	benchRegistrations(b, a, writers, "")
}

// benchRegistrations is benchWrites with checks (a JSON array, "" for
// none) in every registration.
func benchRegistrations(b *testing.B, a *agenttest.Agent, writers int, checks string) {
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: writers}}
	defer hc.CloseIdleConnections()
	var next atomic.Int64
	lat := make([][]time.Duration, writers)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; next.Add(1) <= int64(b.N); i++ {
				began := time.Now()
				id := w*1000 + i%1000
				body := fmt.Sprintf(`{"id":"inst-%d","name":"svc-%d","address":"10.0.%d.%d","port":%d}`, id, id%100, id>>8&255, id&255, 1024+i)
				if checks != "" {
					body = body[:len(body)-1] + `,"checks":` + checks + `}`
				}
				req, _ := http.NewRequest(http.MethodPut, a.URL+"/v1/services", strings.NewReader(body))
				resp, err := hc.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Errorf("register: %d", resp.StatusCode)
					return
				}
				lat[w] = append(lat[w], time.Since(began))
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "writes/s")
	all := slices.Concat(lat...)
	if len(all) > 0 {
		slices.Sort(all)
		// The tail is what a caller with a deadline meets: a stall of the
		// write path shows here long before it moves the rate.
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
		b.ReportMetric(float64(all[len(all)-1].Microseconds())/1000, "max-ms")
	}
}

// BenchmarkCluster_lockPair: uncontended lock acquire + release pairs
// through the Raft leader, a follower of three servers with default Raft
// settings, and a client agent (as `make bench`'s lock row). An agent
// answers once its own copy holds the change, so through a follower a
// pair also measures how soon followers learn that an entry committed.
func BenchmarkCluster_lockPair(b *testing.B) {
	nodes := benchCluster(b)
	leader := benchLeader(b, nodes)
	var follower *agenttest.Agent
	for _, n := range nodes {
		if n != leader {
			follower = n
			break
		}
	}
	client := agenttest.Join(b, nodes[0], "client-0", false, func(c *agent.Config) { c.DataDir = b.TempDir() })
	client.WaitReady(30 * time.Second)
	for _, v := range []struct {
		name string
		a    *agenttest.Agent
	}{{"leader", leader}, {"follower", follower}, {"client", client}} {
		b.Run(v.name, func(b *testing.B) {
			c, err := api.NewClient(v.a.URL)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			lease, err := c.GrantLease(ctx, time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			before := nudges(b, nodes)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if r, err := c.Lock(ctx, "bench-lock", api.LockRequest{Lease: lease.ID}); err != nil || !r.Held {
					b.Fatalf("lock: %+v %v", r, err)
				}
				if err := c.Unlock(ctx, "bench-lock", lease.ID); err != nil {
					b.Fatalf("unlock: %v", err)
				}
			}
			b.StopTimer()
			b.ReportMetric((nudges(b, nodes)-before)/float64(b.N), "nudges/pair")
		})
	}
}
