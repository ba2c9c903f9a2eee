package main

import (
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"time"
)

// scaleInstances is how many instances the scale row pre-loads.
var scaleInstances = envInt("BENCH_SCALE_INSTANCES", 50000)

// thousands prints n with commas: 50,000.
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// measureRSS fills r with the median RSS of the sidecar servers and of the
// etcd members now.
func (b *bench) measureRSS(r *row, when string) {
	var srv, et []float64
	for _, s := range b.sc.servers {
		if v, err := rssBytes(s.p.pid()); err == nil {
			srv = append(srv, v)
		}
	}
	for _, pid := range b.et.pids() {
		if v, err := rssBytes(pid); err == nil {
			et = append(et, v)
		}
	}
	logf("RSS %s MB: sidecar servers %v, etcd %v", when, mb(srv), mb(et))
	r.sidecar, r.etcd = median(srv), median(et)
}

// scaleSection (BENCH_SECTIONS=scale): an empty sidecar cluster and etcd
// each get scaleInstances instances (sidecar: registered without checks
// through the servers; etcd: a lease and a key each), then registrations
// with a TTL check (etcd: lease grant + put) by 16 writers, as in the
// registration rows, on top of them. It runs last: nothing is cleaned up
// before the clusters stop.
func (b *bench) scaleSection(r, rss *row) {
	if !b.scEmpty {
		if err := resetAll(b.sc); err != nil {
			b.fail("scale: emptying the sidecar cluster", err)
			return
		}
	}
	b.scEmpty = false
	if err := b.preload(scaleInstances, 10*time.Minute); err != nil {
		b.fail("scale: preload", err)
		return
	}
	target := &writeTarget{what: "the servers", c: b.sc, agents: b.sc.servers}
	sc, et, err := b.writeTrials(16, true, []*writeTarget{target}, true)
	if err != nil {
		b.fail("scale", err)
	}
	r.sidecar, r.etcd = median(sc[0]), median(et)
	b.measureRSS(rss, fmt.Sprintf("with %d+ instances", scaleInstances))
	b.notes = append(b.notes, fmt.Sprintf("the %s instances of the scale rows are registered through the three servers (services of 50 instances, no checks; etcd: a lease and a key each) before the registrations are measured.", thousands(scaleInstances)))
}

// tlsSection (BENCH_SECTIONS=tls): a second sidecar cluster of the same
// shape with mutual TLS on every agent's Raft/RPC port (certificates made
// by `sidecar tls` in the scratch directory) and an encrypted gossip
// (--encrypt, which TLS requires); the HTTP API stays plain HTTP on
// loopback in both. Plain and TLS trials alternate; the rows go to the
// second table with the ratio TLS/plain.
func (b *bench) tlsSection() {
	n := b.cfg.trials
	rKill := &row{what: "handover after holder process SIGKILL, TTL 1s: median", goal: "TLS < 50 ms", met: below(0.050)}
	rKillMax := &row{what: "  same, max"}
	rLock50 := &row{what: "uncontended lock acquire+release through client-0: p50"}
	rLock99 := &row{what: "  same, p99"}
	rLockL50 := &row{what: "uncontended lock acquire+release through the Raft leader: p50"}
	rLockL99 := &row{what: "  same, p99"}
	rPut16 := &row{what: "write throughput, 16 clients spread over the servers (register)", unit: unitRate, goal: "TLS ≥ 0.9× plain", met: ratioAtLeast(0.9)}
	rPut64 := &row{what: "write throughput, 64 clients spread over the servers", unit: unitRate, goal: "TLS ≥ 0.9× plain", met: ratioAtLeast(0.9)}
	for _, r := range []*row{rKill, rKillMax, rLock50, rLock99, rLockL50, rLockL99, rPut16, rPut64} {
		r.sidecar, r.etcd = math.NaN(), math.NaN()
		b.tlsRows = append(b.tlsRows, r)
	}

	logf("tls: making a CA, certificates and a gossip key with %s", b.cfg.sidecarBin)
	files, err := makeTLS(b.sup, b.cfg.sidecarBin, filepath.Join(b.cfg.dir, "tls"))
	if err != nil {
		b.fail("tls: files", err)
		return
	}
	logf("tls: starting a 3-server sidecar cluster and 2 clients with TLS")
	tc, err := startSidecar(b.sup, b.cfg.sidecarBin, filepath.Join(b.cfg.dir, "sidecar-tls"), clusterOpts{label: "tls-", tls: files}, 3, "client-0", "client-1")
	if err != nil {
		b.fail("tls: cluster", err)
		return
	}
	defer func() {
		logf("tls: stopping the TLS cluster")
		tc.stop(5 * time.Second)
	}()
	if err := b.sc.waitHealthy(60 * time.Second); err != nil {
		b.fail("tls: plain cluster", err)
		return
	}
	b.tlsNote = append(b.tlsNote,
		"plain: "+b.sc.streamSources()+"; TLS: "+tc.streamSources()+" (the rows through client-0 and client-1 depend on it: see \"follower lag\" in bench/README.md).")

	// Process-kill handover, the shortest TTL, phases spread as in the
	// main table.
	var pk, tk []float64
	for i := 0; i < n; i++ {
		for _, v := range []struct {
			c   *sidecarCluster
			out *[]float64
		}{{b.sc, &pk}, {tc, &tk}} {
			d, err := v.c.killHandover(fmt.Sprintf("tls-kill-%d", i), "1s", false, 0, phase(i, n, time.Second))
			if err != nil {
				b.fail(v.c.opts.label+"sidecar process kill (tls section)", err)
				continue
			}
			logf("%ssidecar process kill, TTL 1s, trial %d: %v", v.c.opts.label, i+1, d)
			*v.out = append(*v.out, seconds(d))
		}
	}
	rKill.sidecar, rKill.etcd = median(tk), median(pk)
	rKillMax.sidecar, rKillMax.etcd = maxOf(tk), maxOf(pk)
	rKill.note = fmt.Sprintf("(n=%d)", len(tk))

	// Lock latency through client-0 and through the leader.
	for _, via := range []struct {
		agent    func(c *sidecarCluster) (*scNode, error)
		what     string
		r50, r99 *row
	}{
		{func(c *sidecarCluster) (*scNode, error) { return c.clients[0], nil }, "client-0", rLock50, rLock99},
		{func(c *sidecarCluster) (*scNode, error) { return c.leader() }, "the leader", rLockL50, rLockL99},
	} {
		var p50, p99, t50, t99 []float64
		for i := 0; i < n; i++ {
			for _, v := range []struct {
				c        *sidecarCluster
				q50, q99 *[]float64
			}{{b.sc, &p50, &p99}, {tc, &t50, &t99}} {
				a, err := via.agent(v.c)
				if err == nil {
					var lat []float64
					if lat, err = v.c.lockLatency(a, b.cfg.lockOps); err == nil {
						*v.q50, *v.q99 = append(*v.q50, quantile(lat, .5)), append(*v.q99, quantile(lat, .99))
					}
				}
				if err != nil {
					b.fail(v.c.opts.label+"sidecar lock latency through "+via.what, err)
				}
			}
		}
		logf("lock through %s p50 ms: plain %v TLS %v; p99 ms: plain %v TLS %v", via.what, msList(p50), msList(t50), msList(p99), msList(t99))
		via.r50.sidecar, via.r50.etcd = median(t50), median(p50)
		via.r99.sidecar, via.r99.etcd = median(t99), median(p99)
	}

	// Write throughput, as the main table's rows spread over the servers;
	// the 64-client row starts from empty clusters (the scale section
	// empties the plain one again before it loads it).
	for i, t := range []struct {
		clients int
		r       *row
	}{{16, rPut16}, {64, rPut64}} {
		plain := &writeTarget{what: "the servers", c: b.sc, agents: b.sc.servers}
		withTLS := &writeTarget{what: "the servers", c: tc, agents: tc.servers}
		sc, _, err := b.writeTrials(t.clients, false, []*writeTarget{plain, withTLS}, false)
		if err != nil {
			b.fail(fmt.Sprintf("tls: write throughput %d clients", t.clients), err)
		}
		t.r.sidecar, t.r.etcd = median(sc[1]), median(sc[0])
		if i > 0 {
			break
		}
		if err := resetAll(b.sc, tc); err != nil {
			b.fail("tls: emptying the clusters", err)
			return
		}
	}
}
