package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

// etcdMember is one etcd server process.
type etcdMember struct {
	name       string
	clientAddr string // host:port of the client URL
	args       []string
	p          *proc
}

func (m *etcdMember) endpoint() string { return "http://" + m.clientAddr }

// etcdCluster is a 3-member etcd cluster on loopback with default timings
// (heartbeat 100 ms, election timeout 1 s).
type etcdCluster struct {
	sup     *supervisor
	bin     string
	members []*etcdMember
	cli     *clientv3.Client // every endpoint; control and single-client rows
}

func newEtcdClient(endpoints ...string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
	})
}

func startEtcd(sup *supervisor, bin, dataRoot string, n int) (*etcdCluster, error) {
	c := &etcdCluster{sup: sup, bin: bin}
	var peers []string
	peerAddrs := make([]string, n)
	for i := 0; i < n; i++ {
		ca, err := sup.addr()
		if err != nil {
			return nil, err
		}
		pa, err := sup.addr()
		if err != nil {
			return nil, err
		}
		m := &etcdMember{name: fmt.Sprintf("etcd-%d", i), clientAddr: ca}
		peerAddrs[i] = pa
		peers = append(peers, m.name+"=http://"+pa)
		c.members = append(c.members, m)
	}
	token := fmt.Sprintf("bench-%d-%d", os.Getpid(), time.Now().UnixNano())
	for i, m := range c.members {
		m.args = []string{
			"--name", m.name,
			"--data-dir", filepath.Join(dataRoot, m.name),
			"--listen-client-urls", m.endpoint(),
			"--advertise-client-urls", m.endpoint(),
			"--listen-peer-urls", "http://" + peerAddrs[i],
			"--initial-advertise-peer-urls", "http://" + peerAddrs[i],
			"--initial-cluster", strings.Join(peers, ","),
			"--initial-cluster-token", token,
			"--initial-cluster-state", "new",
			"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
		}
		p, err := sup.start(m.name, bin, m.args...)
		if err != nil {
			return nil, err
		}
		m.p = p
	}
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.endpoint())
	}
	cli, err := newEtcdClient(eps...)
	if err != nil {
		return nil, err
	}
	c.cli = cli
	if err := c.waitHealthy(60 * time.Second); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *etcdCluster) endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.endpoint())
	}
	return eps
}

// status asks one member for its view: its id and the leader it knows.
func (c *etcdCluster) status(m *etcdMember, timeout time.Duration) (id, leader uint64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	st, err := c.cli.Status(ctx, m.endpoint())
	if err != nil {
		return 0, 0, err
	}
	return st.Header.MemberId, st.Leader, nil
}

// waitHealthy waits until every member runs, all name the same leader, and
// a write commits.
func (c *etcdCluster) waitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		last = c.healthy()
		if last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("etcd cluster not healthy within %v: %w", timeout, last)
}

func (c *etcdCluster) healthy() error {
	var lead uint64
	for _, m := range c.members {
		if m.p.exited() {
			return fmt.Errorf("%s exited: %s", m.name, m.p.tail())
		}
		_, l, err := c.status(m, time.Second)
		if err != nil {
			return fmt.Errorf("%s: %w", m.name, err)
		}
		if l == 0 || (lead != 0 && l != lead) {
			return fmt.Errorf("%s: leader %x, others %x", m.name, l, lead)
		}
		lead = l
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := c.cli.Put(ctx, "/bench/healthy", "1")
	return err
}

// leader returns the member that leads.
func (c *etcdCluster) leader() (*etcdMember, uint64, error) {
	for _, m := range c.members {
		id, l, err := c.status(m, time.Second)
		if err == nil && id == l {
			return m, id, nil
		}
	}
	return nil, 0, errors.New("etcd: no member leads")
}

func (c *etcdCluster) restart(m *etcdMember) error {
	p, err := c.sup.start(m.name, c.bin, m.args...)
	if err != nil {
		return err
	}
	m.p = p
	return nil
}

func (c *etcdCluster) pids() []int {
	var ps []int
	for _, m := range c.members {
		ps = append(ps, m.p.pid())
	}
	return ps
}

func (c *etcdCluster) close() {
	if c.cli != nil {
		c.cli.Close()
	}
}

// minTTL asks for a 1 s lease and returns what etcd grants.
func (c *etcdCluster) minTTL() (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g, err := c.cli.Grant(ctx, 1)
	if err != nil {
		return 0, err
	}
	defer c.cli.Revoke(ctx, g.ID)
	return g.TTL, nil
}

// campaignB starts candidate B's campaign in an election where A leads and
// returns once B's key is queued behind A's: won receives the time B leads.
func (c *etcdCluster) campaignB(pfx string, ttl int64, bound time.Duration) (e *concurrency.Election, s *concurrency.Session, won chan time.Time, errc chan error, err error) {
	s, err = concurrency.NewSession(c.cli, concurrency.WithTTL(int(ttl)))
	if err != nil {
		return nil, nil, nil, nil, err
	}
	e = concurrency.NewElection(s, pfx)
	won, errc = make(chan time.Time, 1), make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	go func() {
		defer cancel()
		if err := e.Campaign(ctx, "b:2"); err != nil {
			errc <- err
			return
		}
		won <- time.Now()
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		gctx, gcancel := context.WithTimeout(context.Background(), time.Second)
		r, err := c.cli.Get(gctx, pfx+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		gcancel()
		if err == nil && r.Count >= 2 {
			return e, s, won, errc, nil
		}
		if time.Now().After(deadline) {
			s.Close()
			return nil, nil, nil, nil, fmt.Errorf("B not queued in %s within 10s (count %v, err %v)", pfx, r, err)
		}
		select {
		case err := <-errc:
			s.Close()
			return nil, nil, nil, nil, fmt.Errorf("B campaign: %w", err)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// killHandover: a separate process (this binary, etcd-hold) leads with a
// session of ttl seconds, B campaigns here, the holder dies by SIGKILL; it
// returns the time from the kill (phase after the holder led) until B's
// Campaign returned.
func (c *etcdCluster) killHandover(self, name string, ttl int64, phase time.Duration) (time.Duration, error) {
	pfx := "/bench/election/" + name
	a, err := c.sup.start("etcd-hold", self, "etcd-hold", "-endpoints", strings.Join(c.endpoints(), ","),
		"-election", pfx, "-value", "a:1", "-ttl", strconv.FormatInt(ttl, 10))
	if err != nil {
		return 0, err
	}
	defer a.kill9()
	if _, err := a.waitLine("leading", 15*time.Second); err != nil {
		return 0, err
	}
	led := time.Now()
	bound := time.Duration(ttl)*time.Second + 30*time.Second
	e, s, won, errc, err := c.campaignB(pfx, ttl, bound)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	time.Sleep(time.Until(led.Add(phase)))
	t0 := time.Now()
	a.signal(syscall.SIGKILL)
	select {
	case t := <-won:
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		e.Resign(ctx)
		cancel()
		return t.Sub(t0), nil
	case err := <-errc:
		return 0, fmt.Errorf("B campaign: %w", err)
	}
}

// gracefulHandover: A leads, B waits, A resigns; the time from the resign
// call until B's Campaign returned.
func (c *etcdCluster) gracefulHandover(name string, ttl int64) (time.Duration, error) {
	pfx := "/bench/graceful/" + name
	sa, err := concurrency.NewSession(c.cli, concurrency.WithTTL(int(ttl)))
	if err != nil {
		return 0, err
	}
	defer sa.Close()
	ea := concurrency.NewElection(sa, pfx)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ea.Campaign(ctx, "a:1"); err != nil {
		return 0, fmt.Errorf("A campaign: %w", err)
	}
	eb, sb, won, errc, err := c.campaignB(pfx, ttl, 30*time.Second)
	if err != nil {
		return 0, err
	}
	defer sb.Close()
	time.Sleep(settle)
	t0 := time.Now()
	if err := retry(10*time.Second, func(ctx context.Context) error { return ea.Resign(ctx) }); err != nil {
		return 0, fmt.Errorf("A resign: %w", err)
	}
	select {
	case t := <-won:
		eb.Resign(ctx)
		return t.Sub(t0), nil
	case err := <-errc:
		return 0, fmt.Errorf("B campaign: %w", err)
	}
}

// lockLatency: ops uncontended Mutex Lock+Unlock pairs on one session.
func (c *etcdCluster) lockLatency(ops int) ([]float64, error) {
	s, err := concurrency.NewSession(c.cli, concurrency.WithTTL(60))
	if err != nil {
		return nil, err
	}
	defer s.Close()
	m := concurrency.NewMutex(s, "/bench/lock/")
	var lat []float64
	for i := 0; i < ops; i++ {
		t0 := time.Now()
		if err := retry(10*time.Second, m.Lock); err != nil {
			return nil, fmt.Errorf("lock: %w", err)
		}
		if err := retry(10*time.Second, m.Unlock); err != nil {
			return nil, fmt.Errorf("unlock: %w", err)
		}
		lat = append(lat, seconds(time.Since(t0)))
	}
	return lat, nil
}

// etcdWriters are throughput clients, one clientv3.Client each, spread
// round-robin over the members.
type etcdWriters struct {
	clis []*clientv3.Client

	mu     sync.Mutex
	leases []clientv3.LeaseID // granted by register
}

func (c *etcdCluster) writers(n int) (*etcdWriters, error) {
	w := &etcdWriters{}
	for i := 0; i < n; i++ {
		cli, err := newEtcdClient(c.members[i%len(c.members)].endpoint())
		if err != nil {
			w.close()
			return nil, err
		}
		w.clis = append(w.clis, cli)
	}
	return w, nil
}

func (w *etcdWriters) close() {
	for _, c := range w.clis {
		c.Close()
	}
}

// register is an etcd service registration: a lease, and the instance's
// key attached to it. The lease (3600 s) does not expire during the run,
// so no expiry competes with the measurement (sidecar's TTL checks never
// passed, so their expiry writes nothing either); cleanup revokes them.
func (w *etcdWriters) register(cli *clientv3.Client, key, val string) func(ctx context.Context) error {
	var lease clientv3.LeaseID
	return func(ctx context.Context) error {
		if lease == 0 {
			g, err := cli.Grant(ctx, 3600)
			if err != nil {
				return err
			}
			lease = g.ID
			w.mu.Lock()
			w.leases = append(w.leases, lease)
			w.mu.Unlock()
		}
		if _, err := cli.Put(ctx, key, val, clientv3.WithLease(lease)); err != nil {
			return err
		}
		lease = 0
		return nil
	}
}

// cleanup deletes every key under pfx and revokes the leases granted, so
// that the next row starts from the same state.
func (w *etcdWriters) cleanup(pfx string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := w.clis[0].Delete(ctx, pfx, clientv3.WithPrefix()); err != nil {
		return err
	}
	w.mu.Lock()
	leases := w.leases
	w.leases = nil
	w.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(w.clis))
	for i, cli := range w.clis {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := i; j < len(leases); j += len(w.clis) {
				if _, err := cli.Revoke(ctx, leases[j]); err != nil && errs[i] == nil {
					errs[i] = err
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// etcdHold is the holder process of the kill rows: it leads an election
// with a session of -ttl seconds, prints "leading", and stays until killed
// (at most -max).
func etcdHold(args []string) int {
	fs := flag.NewFlagSet("etcd-hold", flag.ContinueOnError)
	endpoints := fs.String("endpoints", "", "comma list of client URLs")
	election := fs.String("election", "", "election prefix")
	value := fs.String("value", "", "value proclaimed")
	ttl := fs.Int("ttl", 2, "session TTL in seconds")
	maxLife := fs.Duration("max", 2*time.Minute, "exit after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cli, err := newEtcdClient(strings.Split(*endpoints, ",")...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd-hold:", err)
		return 1
	}
	defer cli.Close()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(*ttl))
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd-hold: session:", err)
		return 1
	}
	e := concurrency.NewElection(s, *election)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Campaign(ctx, *value); err != nil {
		fmt.Fprintln(os.Stderr, "etcd-hold: campaign:", err)
		return 1
	}
	fmt.Printf("leading %s lease %x ttl %ds\n", e.Key(), s.Lease(), *ttl)
	select {
	case <-s.Done():
		fmt.Println("lost")
		return 1
	case <-time.After(*maxLife):
		return 0
	}
}
