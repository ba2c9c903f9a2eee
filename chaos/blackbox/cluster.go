package blackbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sidecarhq/sidecar/api"
)

// Ports every agent listens on, each on its own namespace's address.
const (
	gossipPort = 7946
	raftPort   = 7947
	httpPort   = 7080
	dnsPort    = 7053
)

// Env is what run.sh set up: the namespaces, the addresses and where the
// binary and logs are.
type Env struct {
	// Prefix names the namespaces: <Prefix>-n1 ... <Prefix>-n7.
	Prefix string
	// Net is the first three octets of the bridge's /24; the harness is
	// Net.1, node i (1-based) Net.(10+i).
	Net     string
	Bin     string
	LogDir  string
	DataDir string
	Servers int
	Clients int
	// SessionTTL is each agent's --session-ttl (its node lease).
	SessionTTL time.Duration
	// TLSDir, when set, holds the cluster CA (sidecar-ca.pem) and each
	// node's certificate and key (<name>.pem, <name>-key.pem) that run.sh
	// made with `sidecar tls`: every agent then runs its Raft/RPC port with
	// mutual TLS and gossip encrypted with Encrypt. Empty: plain text, as
	// before TLS existed (BLACKBOX_TLS=0).
	TLSDir  string
	Encrypt string
	// ACL runs every agent with --acl-default-policy deny (BLACKBOX_ACL,
	// default 1): the harness bootstraps the cluster's ACLs, reads and
	// injects faults with the management token, and every app of the
	// campaign writes with a token of its own, so that the ownership of
	// leases and candidacies is exercised under the faults. DNSToken is
	// the secret of the agents' --acl-dns-token, created after bootstrap.
	ACL      bool
	DNSToken string
}

// Transport names the run's Raft/RPC transport (and ACL mode) for the
// summaries.
func (e Env) Transport() string {
	t := "plain"
	if e.TLSDir != "" {
		t = "tls"
	}
	if e.ACL {
		t += "+acl"
	}
	return t
}

// LoadEnv reads the environment run.sh sets; ok is false outside run.sh.
func LoadEnv() (Env, bool, error) {
	e := Env{
		Prefix:     os.Getenv("BLACKBOX_PREFIX"),
		Net:        os.Getenv("BLACKBOX_NET"),
		Bin:        os.Getenv("SIDECAR_BIN"),
		LogDir:     os.Getenv("BLACKBOX_LOGDIR"),
		DataDir:    os.Getenv("BLACKBOX_DATADIR"),
		TLSDir:     os.Getenv("BLACKBOX_TLS_DIR"),
		Encrypt:    os.Getenv("BLACKBOX_ENCRYPT"),
		ACL:        os.Getenv("BLACKBOX_ACL") != "0",
		DNSToken:   rand.Text(),
		Servers:    5,
		Clients:    2,
		SessionTTL: 2 * time.Second,
	}
	if e.Prefix == "" {
		return e, false, nil
	}
	if e.Net == "" || e.Bin == "" || e.LogDir == "" || e.DataDir == "" {
		return e, false, errors.New("blackbox: BLACKBOX_NET, SIDECAR_BIN, BLACKBOX_LOGDIR and BLACKBOX_DATADIR must be set with BLACKBOX_PREFIX")
	}
	if (e.TLSDir == "") != (e.Encrypt == "") {
		return e, false, errors.New("blackbox: BLACKBOX_TLS_DIR and BLACKBOX_ENCRYPT go together (the agent refuses TLS without a gossip key)")
	}
	return e, true, nil
}

// HarnessIP is the harness's own address on the bridge, never filtered.
func (e Env) HarnessIP() string { return e.Net + ".1" }

// Node is one agent process in its namespace.
type Node struct {
	Name    string
	Index   int // 1-based
	NS      string
	IP      string
	Server  bool
	DataDir string
	LogPath string
	URL     string
	DNSAddr string
	API     *api.Client
	args    []string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	stopped bool // SIGSTOPped
	starts  int
}

// Cluster is the agents of a run.
type Cluster struct {
	Env     Env
	Nodes   []*Node
	Servers []*Node
	Clients []*Node
	logf    func(string, ...any)
}

// NewCluster describes the nodes; Start starts them.
func NewCluster(env Env, logf func(string, ...any)) (*Cluster, error) {
	c := &Cluster{Env: env, logf: logf}
	hc := &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     30 * time.Second,
	}}
	var join []string
	for i := 1; i <= env.Servers; i++ {
		join = append(join, fmt.Sprintf("%s.%d:%d", env.Net, 10+i, gossipPort))
	}
	for i := 1; i <= env.Servers+env.Clients; i++ {
		n := &Node{Index: i, NS: fmt.Sprintf("%s-n%d", env.Prefix, i), IP: fmt.Sprintf("%s.%d", env.Net, 10+i), Server: i <= env.Servers}
		if n.Server {
			n.Name = fmt.Sprintf("s%d", i)
		} else {
			n.Name = fmt.Sprintf("c%d", i-env.Servers)
		}
		n.DataDir = filepath.Join(env.DataDir, n.Name)
		n.LogPath = filepath.Join(env.LogDir, n.Name+".log")
		n.URL = fmt.Sprintf("http://%s:%d", n.IP, httpPort)
		n.DNSAddr = fmt.Sprintf("%s:%d", n.IP, dnsPort)
		a, err := api.NewClient(n.URL, api.WithHTTPClient(hc))
		if err != nil {
			return nil, fmt.Errorf("client of %s: %w", n.Name, err)
		}
		n.API = a
		n.args = []string{"agent", "--name", n.Name,
			"--bind-addr", fmt.Sprintf("%s:%d", n.IP, gossipPort), "--advertise-addr", n.IP,
			"--http-addr", n.URL[len("http://"):], "--dns-addr", n.DNSAddr,
			"--join", strings.Join(join, ","), "--session-ttl", env.SessionTTL.String(), "--log-level", "info",
			"--data-dir", n.DataDir}
		if n.Server {
			n.args = append(n.args, "--server", "--bootstrap-expect", strconv.Itoa(env.Servers),
				"--raft-addr", fmt.Sprintf("%s:%d", n.IP, raftPort))
		}
		if env.TLSDir != "" {
			// Servers hold server certificates, clients client ones, each
			// for its own node name (run.sh made them).
			n.args = append(n.args, "--encrypt", env.Encrypt,
				"--tls-ca-file", filepath.Join(env.TLSDir, "sidecar-ca.pem"),
				"--tls-cert-file", filepath.Join(env.TLSDir, n.Name+".pem"),
				"--tls-key-file", filepath.Join(env.TLSDir, n.Name+"-key.pem"))
		}
		if env.ACL {
			n.args = append(n.args, "--acl-default-policy", "deny", "--acl-dns-token", env.DNSToken)
		}
		c.Nodes = append(c.Nodes, n)
		if n.Server {
			c.Servers = append(c.Servers, n)
		} else {
			c.Clients = append(c.Clients, n)
		}
	}
	if err := os.MkdirAll(env.LogDir, 0o755); err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	return c, nil
}

// Start starts n's agent inside its namespace (`ip netns exec` execs the
// agent in place, so the PID signalled is the agent's), appending its
// output to its log.
func (c *Cluster) Start(n *Node) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		select {
		case <-n.done:
			// Nothing here stops an agent but a fault, and each fault starts
			// what it stopped: this one stopped by itself.
			return fmt.Errorf("start %s: its agent had exited on its own (exit status %d; see %s)", n.Name, n.cmd.ProcessState.ExitCode(), n.LogPath)
		default:
			return fmt.Errorf("start %s: already running", n.Name)
		}
	}
	if err := os.MkdirAll(n.DataDir, 0o755); err != nil {
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	f, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: log: %w", n.Name, err)
	}
	n.starts++
	fmt.Fprintf(f, "=== blackbox: start #%d of %s at %s\n", n.starts, n.Name, time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.NS, c.Env.Bin}, n.args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = n.DataDir // whatever an agent writes relative lands in its own dir
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	done := make(chan struct{})
	n.cmd, n.done, n.stopped = cmd, done, false
	go func() {
		cmd.Wait()
		f.Close()
		close(done)
	}()
	return nil
}

// Running reports whether n's process is up (possibly stopped).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Paused reports whether n is SIGSTOPped.
func (n *Node) Paused() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stopped
}

// Kill sends SIGKILL and waits for the process to be gone.
func (c *Cluster) Kill(n *Node) error {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.cmd, n.stopped = nil, false
	n.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("kill %s: pid %d still there after 10s", n.Name, cmd.Process.Pid)
	}
}

// Signal sends SIGSTOP or SIGCONT.
func (c *Cluster) Signal(n *Node, sig syscall.Signal) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return fmt.Errorf("signal %s: not running", n.Name)
	}
	if err := n.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %v to %s: %w", sig, n.Name, err)
	}
	n.stopped = sig == syscall.SIGSTOP
	return nil
}

// Close kills every agent (continuing stopped ones first).
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		if n.Paused() {
			_ = c.Signal(n, syscall.SIGCONT)
		}
		if err := c.Kill(n); err != nil {
			c.logf("%v", err)
		}
	}
}

// StartAll starts every node and waits until each answers /readyz.
func (c *Cluster) StartAll(ctx context.Context, timeout time.Duration) error {
	for _, n := range c.Nodes {
		if err := c.Start(n); err != nil {
			return err
		}
	}
	if err := c.WaitReady(ctx, c.Nodes, timeout); err != nil {
		return err
	}
	if c.Env.ACL {
		return c.bootstrapACL(ctx, timeout)
	}
	return nil
}

// bootstrapACL makes the management token the harness works with and the
// token DNS answers are read with.
func (c *Cluster) bootstrapACL(ctx context.Context, timeout time.Duration) error {
	var mgmt *api.ACLToken
	err := poll(ctx, timeout, 100*time.Millisecond, func() (bool, string) {
		bctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		t, err := c.Servers[0].API.ACLBootstrap(bctx)
		if err != nil {
			return false, fmt.Sprintf("acl bootstrap: %v", err)
		}
		mgmt = t
		return true, ""
	})
	if err != nil {
		return err
	}
	for _, n := range c.Nodes {
		n.API.Token = mgmt.Secret
	}
	_, err = c.CreateToken(ctx, "dns", `{"service":"read","node":"read","election":"read","lock":"read"}`, c.Env.DNSToken)
	return err
}

// CreateToken creates a token (with a chosen secret, or "" for a random
// one), retrying through the servers for a few seconds, and returns its
// secret.
func (c *Cluster) CreateToken(ctx context.Context, desc, rules, secret string) (string, error) {
	var out string
	err := poll(ctx, 10*time.Second, 100*time.Millisecond, func() (bool, string) {
		var last error
		for _, s := range c.Servers {
			tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			t, err := s.API.ACLCreateToken(tctx, api.ACLTokenRequest{Description: desc, Rules: []byte(rules), Secret: secret})
			cancel()
			if err == nil {
				out = t.Secret
				return true, ""
			}
			last = err
		}
		return false, fmt.Sprintf("create token %s: %v", desc, last)
	})
	return out, err
}

// WithToken returns a client of n's agent that sends another token.
func (n *Node) WithToken(secret string) *api.Client {
	cp := *n.API
	cp.Token = secret
	return &cp
}

// WaitReady polls /readyz of nodes until all answer 200.
func (c *Cluster) WaitReady(ctx context.Context, nodes []*Node, timeout time.Duration) error {
	return poll(ctx, timeout, 50*time.Millisecond, func() (bool, string) {
		var notReady []string
		for _, n := range nodes {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			err := n.API.Ready(rctx)
			cancel()
			if err != nil {
				notReady = append(notReady, n.Name)
			}
		}
		return len(notReady) == 0, "not ready: " + strings.Join(notReady, ",")
	})
}

// Status reads n's GET /v1/status within a second.
func (n *Node) Status(ctx context.Context) (*api.Status, error) {
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	st, err := n.API.Status(sctx)
	if err != nil {
		return nil, fmt.Errorf("status of %s: %w", n.Name, err)
	}
	return st, nil
}

// Leader returns the server every one of the given servers names as leader
// (nil when they do not agree, or the named one is not among them).
func (c *Cluster) Leader(ctx context.Context, servers []*Node) *Node {
	name := ""
	for _, s := range servers {
		st, err := s.Status(ctx)
		if err != nil || st.Leader == "" || (name != "" && st.Leader != name) {
			return nil
		}
		name = st.Leader
	}
	for _, s := range servers {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Up returns the nodes whose process runs and is not stopped.
func (c *Cluster) Up(nodes []*Node) []*Node {
	var out []*Node
	for _, n := range nodes {
		if n.Running() && !n.Paused() {
			out = append(out, n)
		}
	}
	return out
}

// Converged reports whether every node's own registry copy has the same
// digest and index, and describes the views otherwise.
func (c *Cluster) Converged(ctx context.Context) (bool, string) {
	views := map[string][]string{}
	ok := true
	for _, n := range c.Nodes {
		st, err := n.Status(ctx)
		if err != nil {
			views["error"] = append(views["error"], n.Name)
			ok = false
			continue
		}
		k := fmt.Sprintf("%d/%.12s", st.RegistryIndex, st.Digest)
		views[k] = append(views[k], n.Name)
		if st.Digest == "" {
			ok = false
		}
	}
	return ok && len(views) == 1, fmt.Sprint(views)
}

// WaitConverged polls until Converged, within timeout.
func (c *Cluster) WaitConverged(ctx context.Context, timeout time.Duration) error {
	return poll(ctx, timeout, 25*time.Millisecond, func() (bool, string) { return c.Converged(ctx) })
}

// poll calls cond every interval until it holds, for at most timeout; the
// error carries cond's last description.
func poll(ctx context.Context, timeout, interval time.Duration, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, desc := cond()
		if ok {
			return nil
		}
		last = desc
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v: %s", timeout, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%s)", ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

// AllAlive reports whether every node's gossip view has every node alive,
// and describes the first view that does not.
func (c *Cluster) AllAlive(ctx context.Context) (bool, string) {
	for _, n := range c.Nodes {
		mctx, cancel := context.WithTimeout(ctx, time.Second)
		ms, err := n.API.Members(mctx)
		cancel()
		if err != nil {
			return false, fmt.Sprintf("members of %s: %v", n.Name, err)
		}
		alive := 0
		var not []string
		for _, m := range ms {
			if m.Status == "alive" {
				alive++
			} else {
				not = append(not, m.Name+"="+m.Status)
			}
		}
		if alive != len(c.Nodes) {
			return false, fmt.Sprintf("%s sees %d alive, %v", n.Name, alive, not)
		}
	}
	return true, ""
}

// AliveEverywhere returns the nodes that every node's gossip view has
// alive (none when some view cannot be read).
func (c *Cluster) AliveEverywhere(ctx context.Context) []*Node {
	count := map[string]int{}
	for _, n := range c.Nodes {
		mctx, cancel := context.WithTimeout(ctx, time.Second)
		ms, err := n.API.Members(mctx)
		cancel()
		if err != nil {
			return nil
		}
		for _, m := range ms {
			if m.Status == "alive" {
				count[m.Name]++
			}
		}
	}
	var out []*Node
	for _, n := range c.Nodes {
		if count[n.Name] == len(c.Nodes) {
			out = append(out, n)
		}
	}
	return out
}
