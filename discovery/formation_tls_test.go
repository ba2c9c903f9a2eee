package discovery_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/discovery"
	"github.com/sidecarhq/sidecar/discovery/discoverytest"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/tlsutil"
)

// lockedBuffer collects log lines from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testCA makes a cluster CA and returns what issues a certificate of it.
func testCA(t *testing.T) func(role tlsutil.Role, node string) *tlsutil.Loader {
	ca, err := tlsutil.NewCA(30, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	caDir := t.TempDir()
	if _, _, err := tlsutil.WriteCA(caDir, ca); err != nil {
		t.Fatal(err)
	}
	return func(role tlsutil.Role, node string) *tlsutil.Loader {
		c, k, err := ca.Issue(tlsutil.CertRequest{Role: role, Node: node})
		if err != nil {
			t.Fatal(err)
		}
		cert, key, err := tlsutil.WriteCert(t.TempDir(), node, c, k)
		if err != nil {
			t.Fatal(err)
		}
		l, err := tlsutil.New(tlsutil.Options{CAFile: caDir + "/" + tlsutil.CACertFile, CertFile: cert, KeyFile: key})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
}

// TestFormation_TLS_onlyCertifiedServersBecomeVoters: a gossip member that
// announces role=server becomes a Raft voter only when its Raft address
// presents a server certificate of the cluster's CA for its name.
func TestFormation_TLS_onlyCertifiedServersBecomeVoters(t *testing.T) {
	loader := testCA(t)
	raftServer := func(node string, sec election.TLS) *election.Server {
		cfg := election.TestServerConfig()
		cfg.Node, cfg.InMemory, cfg.RaftAddr, cfg.TLS = node, true, "127.0.0.1:0", sec
		cfg.Logger = discoverytest.Logger(t, node)
		s, err := election.NewServer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	member := func(name, raftAddr string, join string, expect int) *discovery.Gossip {
		cfg := discoverytest.Config(t, name)
		cfg.Meta = discovery.Meta{Role: discovery.RoleServer, RaftAddr: raftAddr, BootstrapExpect: expect}
		if join != "" {
			cfg.Join = []string{join}
		}
		return discoverytest.Start(t, cfg)
	}

	s1 := raftServer("s1", loader(tlsutil.RoleServer, "s1"))
	g1 := member("s1", string(s1.Addr()), "", 1)
	var logs lockedBuffer
	f := discovery.NewFormation(discovery.FormationConfig{BootstrapExpect: 1, Interval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}, g1, s1, election.NewRemote(s1, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	discoverytest.WaitFor(t, "s1 to bootstrap and lead", s1.IsLeader)

	// Claims role=server: with a client certificate, with another node's
	// server certificate, and with nothing listening at all.
	asClient := raftServer("c1", loader(tlsutil.RoleClient, "c1"))
	member("c1", string(asClient.Addr()), g1.Addr(), 0)
	s2 := raftServer("s2", loader(tlsutil.RoleServer, "s2"))
	member("s2-twin", string(s2.Addr()), g1.Addr(), 0)
	member("ghost", "127.0.0.1:1", g1.Addr(), 0)
	// The real one.
	member("s2", string(s2.Addr()), g1.Addr(), 0)

	voters := func() []string {
		fut := s1.Raft().GetConfiguration()
		if fut.Error() != nil {
			return nil
		}
		var ids []string
		for _, s := range fut.Configuration().Servers {
			if s.Suffrage == raft.Voter {
				ids = append(ids, string(s.ID))
			}
		}
		return ids
	}
	discoverytest.WaitFor(t, "s2 to become a voter and every impostor to be refused", func() bool {
		out := logs.String()
		return strings.Contains(strings.Join(voters(), ","), "s2") &&
			strings.Contains(out, "server=c1") && strings.Contains(out, "server=s2-twin") && strings.Contains(out, "server=ghost")
	})
	if got := strings.Join(voters(), ","); got != "s1,s2" {
		t.Fatalf("voters %s, want s1,s2", got)
	}
}

// With TLS, only a server that proves it is one can tell a fresh server it
// was a founder: a gossip member that claims role=server without a server
// certificate and lists the fresh server's run in its founders tag (which
// would let a server that lost its votes vote again at once) is refused,
// and the fresh server stays behind its vote gate.
func TestFormation_TLS_foundersTagFromAnImpostorOpensNoGate(t *testing.T) {
	loader := testCA(t)
	cfg := election.TestServerConfig()
	cfg.Node, cfg.InMemory, cfg.RaftAddr, cfg.GateFresh = "s1", true, "127.0.0.1:0", true
	cfg.TLS = loader(tlsutil.RoleServer, "s1")
	cfg.Logger = discoverytest.Logger(t, "s1")
	s1, err := election.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s1.Close() })
	gc := discoverytest.Config(t, "s1")
	gc.Meta = discovery.Meta{Role: discovery.RoleServer, RaftAddr: string(s1.Addr()), BootstrapExpect: 3}
	g1 := discoverytest.Start(t, gc)
	if fresh, _ := s1.Fresh(); !fresh {
		t.Fatal("s1 is not fresh: the test shows nothing")
	}

	ghost := discoverytest.Config(t, "ghost")
	ghost.Join = []string{g1.Addr()}
	ghost.Meta = discovery.Meta{Role: discovery.RoleServer, RaftAddr: "127.0.0.1:1", BootstrapExpect: 3,
		Tags: map[string]string{discovery.TagBootstrapped: "1", discovery.TagFounders: g1.LocalMember().Boot[:8]}}
	discoverytest.Start(t, ghost)
	discoverytest.WaitFor(t, "s1 to see the ghost", func() bool { return g1.NumMembers() == 2 })

	var logs lockedBuffer
	f := discovery.NewFormation(discovery.FormationConfig{BootstrapExpect: 3, Interval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}, g1, s1, election.NewRemote(s1, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	// The ghost's tag says a cluster exists, so s1 bootstraps nothing: the
	// only check of the ghost's certificate is the one of its founders tag.
	discoverytest.WaitFor(t, "the ghost's certificate refused", func() bool { return strings.Contains(logs.String(), "server=ghost") })
	if fresh, _ := s1.Fresh(); !fresh {
		t.Fatal("an impostor's founders tag opened the vote gate of a fresh server")
	}
}
