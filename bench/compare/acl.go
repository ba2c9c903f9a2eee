package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"time"
)

// aclRules are the rules of the token the ACL cluster's writers and
// lockers carry: what the measured work needs and no more, so that every
// request is checked against rules (a management token skips them).
const aclRules = `{"service": {"": "write"}, "lock": {"bench-": "write"}, "lease": "write", "node": "read", "operator": "read"}`

// tokenTransport sends a cluster's token on every request as
// X-Sidecar-Token, once it has one.
type tokenTransport struct {
	base  http.RoundTripper
	token *atomic.Pointer[string]
}

func (t tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if s := t.token.Load(); s != nil && *s != "" {
		r = r.Clone(r.Context())
		r.Header.Set("X-Sidecar-Token", *s)
	}
	return t.base.RoundTrip(r)
}

// bootstrapACL makes the ACL cluster's tokens once its servers are ready:
// PUT /v1/acl/bootstrap on a server (retried until a leader takes it),
// then PUT /v1/acl/tokens with aclRules under the management token; the
// new token's secret is what every API client of the cluster sends from
// then on.
func (c *sidecarCluster) bootstrapACL(timeout time.Duration) error {
	for _, n := range c.nodes() {
		if err := waitReady(n, timeout); err != nil {
			return err
		}
	}
	base := "http://" + c.servers[0].http
	var mgmt struct {
		Secret string `json:"secret"`
	}
	if err := retry(timeout, func(ctx context.Context) error {
		return aclCall(ctx, "PUT", base+"/v1/acl/bootstrap", "", nil, &mgmt)
	}); err != nil {
		return fmt.Errorf("acl bootstrap (needs the HTTP API's /v1/acl routes): %w", err)
	}
	var tok struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	req := map[string]any{"description": "bench", "rules": json.RawMessage(aclRules)}
	if err := retry(timeout, func(ctx context.Context) error {
		return aclCall(ctx, "PUT", base+"/v1/acl/tokens", mgmt.Secret, req, &tok)
	}); err != nil {
		return fmt.Errorf("acl token: %w", err)
	}
	if tok.Secret == "" {
		return fmt.Errorf("acl token %q created without a secret in the answer", tok.ID)
	}
	c.token.Store(&tok.Secret)
	logf("%sbootstrapped ACLs; token %s with rules %s", c.opts.label, tok.ID, aclRules)
	return nil
}

func aclCall(ctx context.Context, method, url, token string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("X-Sidecar-Token", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, bytes.TrimSpace(b))
	}
	return json.Unmarshal(b, out)
}

// aclSection (BENCH_SECTIONS=acl): a second sidecar cluster of the same
// shape under --acl-default-policy deny, every request carrying a token
// with rules (aclRules); plain and ACL trials alternate. The rows go to a
// table of their own with the ratio ACL/plain. Without the HTTP API's ACL
// routes and checks the section fails at the bootstrap, or measures
// nothing of the ACLs' cost.
func (b *bench) aclSection() {
	n := b.cfg.trials
	rLock50 := &row{what: "uncontended lock acquire+release through client-0: p50", goal: "ACL ≤ 1.05× plain", met: ratioAtMost(1.05)}
	rLock99 := &row{what: "  same, p99"}
	// Through each cluster's Raft leader the two sides have the same
	// placement: through client-0 it differs by where each client's
	// writes and change stream go (a follower adds a hop), which moved the
	// client row by ±7% between runs whatever the ACLs cost.
	rLeader50 := &row{what: "uncontended lock acquire+release through the Raft leader: p50", goal: "ACL ≤ 1.05× plain", met: ratioAtMost(1.05)}
	rLeader99 := &row{what: "  same, p99"}
	rPut16 := &row{what: "write throughput, 16 clients spread over the servers (register)", unit: unitRate, goal: "ACL ≥ 0.95× plain", met: ratioAtLeast(0.95)}
	for _, r := range []*row{rLock50, rLock99, rLeader50, rLeader99, rPut16} {
		r.sidecar, r.etcd = math.NaN(), math.NaN()
		b.aclRows = append(b.aclRows, r)
	}
	logf("acl: starting a 3-server sidecar cluster and 2 clients under --acl-default-policy deny")
	ac, err := startSidecar(b.sup, b.cfg.sidecarBin, filepath.Join(b.cfg.dir, "sidecar-acl"), clusterOpts{label: "acl-", aclDeny: true}, 3, "client-0", "client-1")
	if err != nil {
		b.fail("acl: cluster", err)
		return
	}
	defer func() {
		logf("acl: stopping the ACL cluster")
		ac.stop(5 * time.Second)
	}()
	if err := b.sc.waitHealthy(60 * time.Second); err != nil {
		b.fail("acl: plain cluster", err)
		return
	}

	// Warm up both clusters untimed: the ACL cluster has just started,
	// and its first lock round was ten times slower than the next ones
	// (55 ms against 6 ms p50 in a smoke run), whatever the ACLs cost.
	for _, c := range []*sidecarCluster{b.sc, ac} {
		if _, err := c.lockLatency(c.clients[0], 20); err != nil {
			b.fail(c.opts.label+"sidecar lock warm-up (acl section)", err)
			return
		}
	}
	var p50, p99, a50, a99 []float64
	for i := 0; i < n; i++ {
		for _, v := range []struct {
			c        *sidecarCluster
			q50, q99 *[]float64
		}{{b.sc, &p50, &p99}, {ac, &a50, &a99}} {
			lat, err := v.c.lockLatency(v.c.clients[0], b.cfg.lockOps)
			if err != nil {
				b.fail(v.c.opts.label+"sidecar lock latency through client-0 (acl section)", err)
				continue
			}
			*v.q50, *v.q99 = append(*v.q50, quantile(lat, .5)), append(*v.q99, quantile(lat, .99))
		}
	}
	logf("lock through client-0 p50 ms: plain %v ACL %v; p99 ms: plain %v ACL %v", msList(p50), msList(a50), msList(p99), msList(a99))
	rLock50.sidecar, rLock50.etcd = median(a50), median(p50)
	rLock99.sidecar, rLock99.etcd = median(a99), median(p99)

	var l50, l99, la50, la99 []float64
	for i := 0; i < n; i++ {
		for _, v := range []struct {
			c        *sidecarCluster
			q50, q99 *[]float64
		}{{b.sc, &l50, &l99}, {ac, &la50, &la99}} {
			ldr, err := v.c.leader()
			if err != nil {
				b.fail(v.c.opts.label+"sidecar leader (acl section)", err)
				continue
			}
			lat, err := v.c.lockLatency(ldr, b.cfg.lockOps)
			if err != nil {
				b.fail(v.c.opts.label+"sidecar lock latency through the leader (acl section)", err)
				continue
			}
			*v.q50, *v.q99 = append(*v.q50, quantile(lat, .5)), append(*v.q99, quantile(lat, .99))
		}
	}
	logf("lock through the leader p50 ms: plain %v ACL %v; p99 ms: plain %v ACL %v", msList(l50), msList(la50), msList(l99), msList(la99))
	rLeader50.sidecar, rLeader50.etcd = median(la50), median(l50)
	rLeader99.sidecar, rLeader99.etcd = median(la99), median(l99)

	plain := &writeTarget{what: "the servers", c: b.sc, agents: b.sc.servers}
	withACL := &writeTarget{what: "the servers", c: ac, agents: ac.servers}
	sc, _, err := b.writeTrials(16, false, []*writeTarget{plain, withACL}, false)
	if err != nil {
		b.fail("acl: write throughput 16 clients", err)
	}
	if len(sc) == 2 {
		rPut16.sidecar, rPut16.etcd = median(sc[1]), median(sc[0])
	}
	b.aclNote = append(b.aclNote, fmt.Sprintf("ACL cluster: --acl-default-policy deny; a token bootstrapped with PUT /v1/acl/bootstrap, then one with rules %s from PUT /v1/acl/tokens, sent as X-Sidecar-Token on every request of the measured work.", aclRules))
}
