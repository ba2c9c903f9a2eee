package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/api"
)

// scNode is one `sidecar agent` process.
type scNode struct {
	name              string
	server            bool
	http, dns, gossip string
	args              []string
	p                 *proc
	c                 *api.Client
}

// sidecarCluster is 3 servers (bootstrap-expect 3) and some clients on
// loopback, with default timings.
type sidecarCluster struct {
	sup      *supervisor
	bin      string
	dataRoot string
	opts     clusterOpts
	servers  []*scNode
	clients  []*scNode
	joins    []string // gossip addresses of the servers
	nextNode int
	// token is the secret every API client of the cluster sends, once
	// bootstrapACL made it (ACL clusters only).
	token atomic.Pointer[string]
}

// clusterOpts set a cluster apart from the plain one.
type clusterOpts struct {
	// label prefixes the log file names of its processes ("tls-").
	label string
	// tls, when set, runs every agent with mutual TLS on the Raft/RPC port
	// (and the gossip key TLS requires); the HTTP API stays plain HTTP.
	tls *tlsFiles
	// aclDeny runs every agent with --acl-default-policy deny; the
	// cluster's API clients send the token bootstrapACL makes.
	aclDeny bool
}

// startSidecar starts the cluster and waits until it is healthy; when a
// step fails, it stops the agents it had started.
func startSidecar(sup *supervisor, bin, dataRoot string, opts clusterOpts, nServers int, clients ...string) (_ *sidecarCluster, err error) {
	c := &sidecarCluster{sup: sup, bin: bin, dataRoot: dataRoot, opts: opts}
	defer func() {
		if err != nil {
			c.stop(5 * time.Second)
		}
	}()
	for i := 0; i < nServers; i++ {
		n, err := c.newNode(fmt.Sprintf("server-%d", i), true)
		if err != nil {
			return nil, err
		}
		c.servers = append(c.servers, n)
		c.joins = append(c.joins, n.gossip)
	}
	for i, n := range c.servers {
		var others []string
		for j, g := range c.joins {
			if j != i {
				others = append(others, g)
			}
		}
		n.args = append(n.args, "--server", "--bootstrap-expect", fmt.Sprint(nServers),
			"--data-dir", filepath.Join(dataRoot, n.name), "--join", strings.Join(others, ","))
		if err := c.run(n); err != nil {
			return nil, err
		}
	}
	for _, name := range clients {
		n, err := c.startClient(name)
		if err != nil {
			return nil, err
		}
		c.clients = append(c.clients, n)
	}
	if opts.aclDeny {
		if err := c.bootstrapACL(60 * time.Second); err != nil {
			return nil, err
		}
	}
	if err := c.waitHealthy(60 * time.Second); err != nil {
		return nil, err
	}
	return c, nil
}

// apiClient returns an API client of agent addr that sends the cluster's
// token, when it has one.
func (c *sidecarCluster) apiClient(addr string) (*api.Client, error) {
	if !c.opts.aclDeny {
		return api.NewClient(addr)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 16, IdleConnTimeout: 90 * time.Second}
	return api.NewClient(addr, api.WithHTTPClient(&http.Client{Transport: tokenTransport{base: tr, token: &c.token}}))
}

// newNode allocates a node's addresses and its common flags.
func (c *sidecarCluster) newNode(name string, server bool) (*scNode, error) {
	n := &scNode{name: name, server: server}
	var err error
	if n.http, err = c.sup.addr(); err != nil {
		return nil, err
	}
	if n.dns, err = c.sup.addr(); err != nil {
		return nil, err
	}
	if n.gossip, err = c.sup.addr(); err != nil {
		return nil, err
	}
	n.args = []string{"agent", "--name", name, "--bind-addr", n.gossip, "--advertise-addr", "127.0.0.1",
		"--http-addr", n.http, "--dns-addr", n.dns, "--log-level", cmp.Or(os.Getenv("BENCH_LOG_LEVEL"), "warn"),
		// Every writer of the driver is one client address (127.0.0.1) to
		// its agent: the default bound per address (5,000 writes/s) would
		// cap the rows through one agent with 429s, and etcd has no such
		// bound by default.
		"--http-write-rate", "0"}
	if t := c.opts.tls; t != nil {
		cert, key, err := t.cert(c.sup, c.bin, name, server)
		if err != nil {
			return nil, err
		}
		n.args = append(n.args, "--encrypt", t.gossipKey,
			"--tls-ca-file", t.ca, "--tls-cert-file", cert, "--tls-key-file", key)
	}
	if c.opts.aclDeny {
		n.args = append(n.args, "--acl-default-policy", "deny")
	}
	if server {
		raft, err := c.sup.addr()
		if err != nil {
			return nil, err
		}
		n.args = append(n.args, "--raft-addr", raft)
	}
	if n.c, err = c.apiClient(n.http); err != nil {
		return nil, err
	}
	return n, nil
}

func (c *sidecarCluster) run(n *scNode) error {
	p, err := c.sup.start(c.opts.label+n.name, c.bin, n.args...)
	if err != nil {
		return err
	}
	n.p = p
	return nil
}

// startClient starts a client agent joining the servers; extra flags
// follow (e.g. --session-ttl).
func (c *sidecarCluster) startClient(name string, extra ...string) (*scNode, error) {
	n, err := c.newNode(name, false)
	if err != nil {
		return nil, err
	}
	n.args = append(n.args, "--join", strings.Join(c.joins, ","), "--data-dir", filepath.Join(c.dataRoot, name))
	n.args = append(n.args, extra...)
	if err := c.run(n); err != nil {
		return nil, err
	}
	return n, nil
}

// nodes returns the servers, then the clients.
func (c *sidecarCluster) nodes() []*scNode {
	return append(append([]*scNode{}, c.servers...), c.clients...)
}

// stop stops every agent of the cluster by PID (SIGTERM, then SIGKILL
// after grace; SIGKILL at once when grace is 0), all at once, and waits
// until each is reaped.
func (c *sidecarCluster) stop(grace time.Duration) {
	var wg sync.WaitGroup
	for _, n := range c.nodes() {
		if n.p == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if grace == 0 {
				n.p.kill9()
				return
			}
			n.p.stop(grace)
		}()
	}
	wg.Wait()
}

// reset empties the cluster: every agent is killed (by PID), the data
// dirs are removed, and the same agents (same names, addresses and flags)
// start a new cluster. It costs the same whatever the registry holds,
// where deregistering tens of thousands of instances one by one would
// take minutes.
func (c *sidecarCluster) reset() error {
	// SIGKILL: the data dirs go, so a graceful leave buys nothing.
	c.stop(0)
	if err := os.RemoveAll(c.dataRoot); err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	for _, n := range c.nodes() {
		if err := c.run(n); err != nil {
			return fmt.Errorf("reset: %w", err)
		}
	}
	if err := c.waitHealthy(60 * time.Second); err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	return nil
}

func (n *scNode) ready() error {
	if n.p.exited() {
		return fmt.Errorf("%s exited: %s", n.name, n.p.tail())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return n.c.Ready(ctx)
}

func (n *scNode) status() (*api.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return n.c.Status(ctx)
}

func waitReady(n *scNode, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := n.ready()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || n.p.exited() {
			return fmt.Errorf("%s not ready within %v: %w", n.name, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitHealthy waits until every node is ready, the servers agree on a
// leader with all of them as peers, and every client streams from it.
func (c *sidecarCluster) waitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		last = c.healthy()
		if last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("sidecar cluster not healthy within %v: %w", timeout, last)
}

func (c *sidecarCluster) healthy() error {
	lead := ""
	for _, n := range c.nodes() {
		if err := n.ready(); err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
		if !n.server {
			continue
		}
		st, err := n.status()
		if err != nil {
			return err
		}
		if st.Leader == "" || (lead != "" && st.Leader != lead) || len(st.Peers) != len(c.servers) {
			return fmt.Errorf("%s: leader %q (others %q), peers %v", n.name, st.Leader, lead, st.Peers)
		}
		lead = st.Leader
	}
	// A client whose change stream comes from a follower sees its own
	// writes one hop later than one fed by the leader, which it moves to
	// within moments of knowing it: a row measured before that would
	// measure the move.
	for _, n := range c.clients {
		st, err := n.status()
		if err != nil {
			return err
		}
		if st.StreamServer != lead {
			return fmt.Errorf("%s: change stream from %q, the leader is %q", n.name, st.StreamServer, lead)
		}
	}
	return nil
}

func (c *sidecarCluster) leader() (*scNode, error) {
	for _, n := range c.servers {
		if st, err := n.status(); err == nil && st.Leader == n.name {
			return n, nil
		}
	}
	return nil, errors.New("sidecar: no server leads")
}

// elect starts `sidecar elect` against agent n and waits until it leads.
func (c *sidecarCluster) elect(n *scNode, name, value, ttl string) (*proc, error) {
	p, err := c.sup.start("sidecar-elect", c.bin, "elect", name, "--value", value, "--ttl", ttl,
		"--http-addr", n.http, "--", "sleep", "120")
	if err != nil {
		return nil, err
	}
	if _, err := p.waitLine("leading election", 15*time.Second); err != nil {
		p.kill9()
		return nil, err
	}
	return p, nil
}

// holdB opens candidate B's connection-bound campaign on agent n, checks
// that it waits, and returns a channel receiving the time it leads.
func holdB(n *scNode, name, ttl string, bound time.Duration) (*api.Stream[api.CampaignResult], chan time.Time, chan error, error) {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	st, err := n.c.HoldCampaign(ctx, name, api.CampaignRequest{Candidate: "b", Value: "b:2", TTL: ttl})
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	first, err := st.Next()
	if err != nil || first.Leader {
		st.Close()
		cancel()
		return nil, nil, nil, fmt.Errorf("B's first line: %+v, %v", first, err)
	}
	won, errc := make(chan time.Time, 1), make(chan error, 1)
	go func() {
		defer cancel()
		for {
			r, err := st.Next()
			if err != nil {
				errc <- err
				return
			}
			if r.Leader {
				won <- time.Now()
				return
			}
		}
	}()
	return st, won, errc, nil
}

func waitWon(won chan time.Time, errc chan error, t0 time.Time) (time.Duration, error) {
	select {
	case t := <-won:
		return t.Sub(t0), nil
	case err := <-errc:
		return 0, fmt.Errorf("B: %w", err)
	}
}

// settle is how long B has waited in line before a graceful handover: a
// waiter that just queued may still be setting up (etcd syncs a new watch
// on a past revision within 100 ms).
const settle = 300 * time.Millisecond

// killHandover: `sidecar elect` leads through client a, B waits through
// client b; A's process (node false) or A's agent and then A's process
// (node true) die by SIGKILL, phase after A started leading (so that
// trials spread over the keepalive cycle); the time until B's stream says
// it leads.
func (c *sidecarCluster) killHandover(name, ttl string, node bool, seq int, phase time.Duration) (time.Duration, error) {
	return c.killHandoverVia(c.clients[0], c.clients[1], name, ttl, node, seq, phase)
}

// killHandoverVia is killHandover with A's and B's agents given (A's is
// replaced by a fresh client when node is set).
func (c *sidecarCluster) killHandoverVia(a, b *scNode, name, ttl string, node bool, seq int, phase time.Duration) (time.Duration, error) {
	if node {
		var err error
		a, err = c.startClient(fmt.Sprintf("node-%d", seq), "--session-ttl", ttl)
		if err != nil {
			return 0, err
		}
		defer a.p.kill9()
		if err := waitReady(a, 30*time.Second); err != nil {
			return 0, err
		}
	}
	pa, err := c.elect(a, name, "a:1", ttl)
	if err != nil {
		return 0, err
	}
	led := time.Now()
	defer pa.kill9()
	st, won, errc, err := holdB(b, name, ttl, 60*time.Second)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	time.Sleep(time.Until(led.Add(phase)))
	t0 := time.Now()
	if node {
		// The agent first: while it lives, the elect process's death would
		// close its connection and release the hold at once.
		a.p.kill9()
	}
	pa.signal(syscall.SIGKILL)
	return waitWon(won, errc, t0)
}

// gracefulHandover: A leads through client 0, B waits through client 1, A
// resigns (DELETE .../campaign?candidate=a); the time until B leads.
func (c *sidecarCluster) gracefulHandover(name, ttl string) (time.Duration, error) {
	a, b := c.clients[0], c.clients[1]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sa, err := a.c.HoldCampaign(ctx, name, api.CampaignRequest{Candidate: "a", Value: "a:1", TTL: ttl})
	if err != nil {
		return 0, err
	}
	defer sa.Close()
	if r, err := sa.Next(); err != nil || !r.Leader {
		return 0, fmt.Errorf("A does not lead: %+v, %v", r, err)
	}
	sb, won, errc, err := holdB(b, name, ttl, 30*time.Second)
	if err != nil {
		return 0, err
	}
	defer sb.Close()
	time.Sleep(settle)
	t0 := time.Now()
	if err := retry(10*time.Second, func(ctx context.Context) error { return a.c.Resign(ctx, name, "a") }); err != nil {
		return 0, fmt.Errorf("A resign: %w", err)
	}
	return waitWon(won, errc, t0)
}

// lockLatency: ops uncontended acquire+release pairs through agent n on a
// lease of its own.
func (c *sidecarCluster) lockLatency(n *scNode, ops int) ([]float64, error) {
	var lease *api.Lease
	if err := retry(10*time.Second, func(ctx context.Context) (err error) {
		lease, err = n.c.GrantLease(ctx, time.Minute)
		return err
	}); err != nil {
		return nil, err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		n.c.RevokeLease(ctx, lease.ID)
		cancel()
	}()
	var lat []float64
	for i := 0; i < ops; i++ {
		t0 := time.Now()
		if err := retry(10*time.Second, func(ctx context.Context) error {
			r, err := n.c.Lock(ctx, "bench-lock", api.LockRequest{Lease: lease.ID})
			if err == nil && !r.Held {
				err = fmt.Errorf("not held: %+v", r.Holder)
			}
			return err
		}); err != nil {
			return nil, fmt.Errorf("lock: %w", err)
		}
		if err := retry(10*time.Second, func(ctx context.Context) error { return n.c.Unlock(ctx, "bench-lock", lease.ID) }); err != nil {
			return nil, fmt.Errorf("unlock: %w", err)
		}
		lat = append(lat, seconds(time.Since(t0)))
	}
	return lat, nil
}

// propagation: register on client 0, then query client 1's DNS until the
// SRV record appears; the time from the register call to the answer.
func (c *sidecarCluster) propagation(samples, trial int) ([]float64, error) {
	a, b := c.clients[0], c.clients[1]
	dc := &dns.Client{Timeout: time.Second}
	var out []float64
	for i := 0; i < samples; i++ {
		svc := fmt.Sprintf("prop-%d-%d", trial, i)
		q := new(dns.Msg)
		q.SetQuestion(svc+".service.sidecar.", dns.TypeSRV)
		t0 := time.Now()
		if err := retry(10*time.Second, func(ctx context.Context) error {
			_, err := a.c.Register(ctx, api.ServiceRegistration{ID: svc, Name: svc, Address: "10.0.0.1", Port: 80})
			return err
		}); err != nil {
			return nil, err
		}
		for {
			in, _, err := dc.Exchange(q, b.dns)
			if err == nil && len(in.Answer) > 0 {
				break
			}
			if time.Since(t0) > 10*time.Second {
				return nil, fmt.Errorf("%s not in %s's DNS after 10s", svc, b.name)
			}
			time.Sleep(200 * time.Microsecond)
		}
		out = append(out, seconds(time.Since(t0)))
	}
	return out, nil
}

// registration is the body of a throughput write: with a TTL check when
// check is set.
func registration(id, name string, port int, check bool) api.ServiceRegistration {
	r := api.ServiceRegistration{ID: id, Name: name, Address: "10.0.0.1", Port: port}
	if check {
		r.Checks = []api.CheckDefinition{{Type: "ttl", TTL: "10s"}}
	}
	return r
}

// writers returns n API clients spread round-robin over the given agents
// (the servers when none are given), each with its own connections.
func (c *sidecarCluster) writers(n int, agents ...*scNode) ([]*api.Client, error) {
	if len(agents) == 0 {
		agents = c.servers
	}
	var cs []*api.Client
	for i := 0; i < n; i++ {
		cl, err := c.apiClient(agents[i%len(agents)].http)
		if err != nil {
			return nil, err
		}
		cs = append(cs, cl)
	}
	return cs, nil
}

// streamSources says, for each client agent, which server its change
// stream comes from (its GET /v1/status names it).
func (c *sidecarCluster) streamSources() string {
	leader, _ := c.leader()
	var out []string
	for _, cl := range c.clients {
		src := "unknown"
		if st, err := cl.status(); err == nil && st.StreamServer != "" {
			src = st.StreamServer
			if leader != nil && src == leader.name {
				src += " (the leader)"
			} else {
				src += " (a follower)"
			}
		}
		out = append(out, cl.name+" streams from "+src)
	}
	return strings.Join(out, ", ")
}
