package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sidecarhq/sidecar/api"
)

// diag (BENCH_SECTIONS=diag, not part of the table) breaks sidecar's
// latencies down by which agents the two sides talk to.
func (b *bench) diag() {
	c := b.sc
	leader, err := c.leader()
	if err != nil {
		b.fail("diag", err)
		return
	}
	var follower *scNode
	for _, s := range c.servers {
		if s != leader {
			follower = s
			break
		}
	}
	for _, v := range []struct {
		what string
		a, b *scNode
	}{
		{"client-0 -> client-1", c.clients[0], c.clients[1]},
		{"client-0 -> client-0", c.clients[0], c.clients[0]},
		{"leader -> leader", leader, leader},
		{"follower -> follower", follower, follower},
		{"leader -> follower", leader, follower},
		{"follower -> leader", follower, leader},
	} {
		var xs []float64
		for i := 0; i < b.cfg.trials; i++ {
			d, err := c.killHandoverVia(v.a, v.b, fmt.Sprintf("diag-%d-%d", time.Now().UnixNano(), i), "5s", false, 0, 0)
			if err != nil {
				b.fail("diag "+v.what, err)
				break
			}
			xs = append(xs, seconds(d))
		}
		logf("diag process-kill handover %s: ms %v", v.what, msList(xs))
	}
	var followers []*scNode
	for _, s := range c.servers {
		if s != leader {
			followers = append(followers, s)
		}
	}
	for _, n := range []int{1, 16, 64} {
		b.diagThroughput("leader", []*scNode{leader}, n, false)
		b.diagThroughput("followers", followers, n, false)
		b.diagThroughput("all servers", c.servers, n, false)
		b.diagThroughput("clients", c.clients, n, false)
	}
	for _, n := range []*scNode{c.clients[0], leader, follower} {
		lat, err := c.lockLatency(n, b.cfg.lockOps)
		if err != nil {
			b.fail("diag lock", err)
			continue
		}
		logf("diag lock via %s: p50 %.2f ms p99 %.2f ms", n.name, quantile(lat, .5)*1000, quantile(lat, .99)*1000)
	}
}

// diagKeys is how many instance ids each diag writer cycles over.
var diagKeys = envInt("BENCH_DIAG_KEYS", 64)

// diagThroughput measures plain-write throughput with every writer on the
// given agents.
func (b *bench) diagThroughput(what string, agents []*scNode, n int, check bool) {
	var cs []*api.Client
	for i := 0; i < n; i++ {
		cl, err := api.NewClient(agents[i%len(agents)].http)
		if err != nil {
			b.fail("diag", err)
			return
		}
		cs = append(cs, cl)
	}
	cpu := cpuShares(b.pids())
	rate, failed := throughput(n, 500*time.Millisecond, b.cfg.seconds, func(w, i int) func(ctx context.Context) error {
		reg := registration(fmt.Sprintf("dg-%d-%d", w, i%diagKeys), fmt.Sprintf("dg-%d", w), 1+i%60000, check)
		return func(ctx context.Context) error { _, err := cs[w].Register(ctx, reg); return err }
	})
	logf("diag throughput via %s, %d writers, check %v: %.0f/s (%d failed); CPUs used: %s", what, n, check, rate, failed, cpu())
}

// profile (BENCH_SECTIONS=profile) records the sidecar leader and an etcd
// member with perf while BENCH_PROFILE_WRITERS (64) writers load each
// system through every server, and the first client agent while as many
// go through the clients.
func (b *bench) profile() {
	leader, err := b.sc.leader()
	if err != nil {
		b.fail("profile", err)
		return
	}
	perf := func(name string, pid int) *proc {
		p, err := b.sup.start("perf-"+name, "perf", "record", "-F", "499", "-g", "-p", fmt.Sprint(pid),
			"-o", b.cfg.dir+"/perf-"+name+".data", "--", "sleep", "4")
		if err != nil {
			b.fail("profile", err)
		}
		return p
	}
	n := envInt("BENCH_PROFILE_WRITERS", 64)
	p := perf("sidecar", leader.p.pid())
	b.diagThroughput("all servers (profiled)", b.sc.servers, n, false)
	if p != nil {
		<-p.done
	}
	b.diagThroughput("leader", []*scNode{leader}, n, false)
	if len(b.sc.clients) > 0 {
		p = perf("sidecar-client", b.sc.clients[0].p.pid())
		b.diagThroughput("clients (client-0 profiled)", b.sc.clients, n, false)
		if p != nil {
			<-p.done
		}
	}
	var buf strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	leader.c.Metrics(ctx, &buf)
	cancel()
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(l, "sidecar_raft_apply_duration_seconds") {
			logf("leader metric: %s", l)
		}
	}
	etLeader, _, err := b.et.leader()
	if err != nil {
		b.fail("profile", err)
		return
	}
	p = perf("etcd", etLeader.p.pid())
	w, err := b.et.writers(n)
	if err != nil {
		b.fail("profile", err)
		return
	}
	defer w.close()
	cpu := cpuShares(b.pids())
	rate, _ := throughput(n, 500*time.Millisecond, b.cfg.seconds, func(wi, i int) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			_, err := w.clis[wi].Put(ctx, fmt.Sprintf("/p/%d/%d", wi, i%diagKeys), "x")
			return err
		}
	})
	logf("etcd put %d (profiled): %.0f/s; CPUs used: %s", n, rate, cpu())
	if p != nil {
		<-p.done
	}
}

// cpuSeconds reads utime+stime of a process from /proc/<pid>/stat.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// cpuShares returns, for each pid, a function giving the CPUs it used
// since now.
func cpuShares(pids map[string]int) func() string {
	start := time.Now()
	before := map[string]float64{}
	for k, p := range pids {
		before[k] = cpuSeconds(p)
	}
	return func() string {
		el := time.Since(start).Seconds()
		var parts []string
		for k, p := range pids {
			parts = append(parts, fmt.Sprintf("%s %.2f", k, (cpuSeconds(p)-before[k])/el))
		}
		sort.Strings(parts)
		return strings.Join(parts, ", ")
	}
}

// pids names every process of interest, the driver included.
func (b *bench) pids() map[string]int {
	m := map[string]int{"driver": os.Getpid()}
	for _, n := range append(append([]*scNode{}, b.sc.servers...), b.sc.clients...) {
		m[n.name] = n.p.pid()
	}
	for _, e := range b.et.members {
		m[e.name] = e.p.pid()
	}
	return m
}
