package discovery_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/discovery"
	"github.com/sidecarhq/sidecar/discovery/discoverytest"
	"github.com/sidecarhq/sidecar/election"
)

// founder is one server of a --bootstrap-expect cluster run piece by piece:
// its formation can start late, and the whole server can be killed.
type founder struct {
	name   string
	srv    *election.Server
	g      *discovery.Gossip
	cancel context.CancelFunc
	done   chan struct{}
}

func newFounder(t *testing.T, name, join string) *founder {
	cfg := election.TestServerConfig()
	cfg.Node, cfg.InMemory, cfg.RaftAddr, cfg.GateFresh = name, true, "127.0.0.1:0", true
	cfg.Logger = discoverytest.Logger(t, name)
	srv, err := election.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	gc := discoverytest.Config(t, name)
	gc.Meta = discovery.Meta{Role: discovery.RoleServer, RaftAddr: string(srv.Addr()), BootstrapExpect: 3}
	if join != "" {
		gc.Join = []string{join}
	}
	n := &founder{name: name, srv: srv, g: discoverytest.Start(t, gc)}
	t.Cleanup(n.kill)
	return n
}

// form starts the server's formation; the leader would heal a gated voter
// only after an hour.
func (n *founder) form(t *testing.T) {
	f := discovery.NewFormation(discovery.FormationConfig{BootstrapExpect: 3, Interval: 20 * time.Millisecond,
		PromoteAfter: time.Hour, Logger: discoverytest.Logger(t, n.name)}, n.g, n.srv, election.NewRemote(n.srv, nil))
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan struct{})
	go func() { defer close(n.done); f.Run(ctx) }()
}

// kill stops the server as a crash would: no leave, no leadership handed
// over. Safe twice.
func (n *founder) kill() {
	if n.cancel != nil {
		n.cancel()
		<-n.done
		n.cancel = nil
	}
	if n.g != nil {
		n.g.Shutdown()
		n.g = nil
		n.srv.Close()
	}
}

// A founder may learn of the cluster only once it already has a leader:
// its formation then finds the others' tags saying so, and it bootstraps
// nothing, the configuration reaching it from the leader instead. It is a
// founder all the same (it was running with no Raft state when the others
// counted it), so it votes at once: when the first leader dies before
// anything else happened, the two servers left elect a new one. Gated as a
// wiped server is, it would withhold its vote until the leader demoted and
// promoted it, and with that leader dead there would be no leader at all.
func TestFormation_lateFounderVotesWhenTheFirstLeaderDiesAtOnce(t *testing.T) {
	s1 := newFounder(t, "s1", "")
	s2 := newFounder(t, "s2", s1.g.Addr())
	s3 := newFounder(t, "s3", s1.g.Addr())
	for _, n := range []*founder{s1, s2, s3} {
		discoverytest.WaitFor(t, n.name+" to see 3 servers", func() bool { return n.g.NumMembers() == 3 })
	}
	s1.form(t)
	s2.form(t)

	var leader, other *founder
	discoverytest.WaitFor(t, "a leader among s1 and s2, and s3 holding their configuration", func() bool {
		switch {
		case s1.srv.IsLeader():
			leader, other = s1, s2
		case s2.srv.IsLeader():
			leader, other = s2, s1
		default:
			return false
		}
		fut := s3.srv.Raft().GetConfiguration()
		return fut.Error() == nil && len(fut.Configuration().Servers) == 3
	})
	if fresh, _ := s3.srv.Fresh(); !fresh {
		t.Fatal("s3 is not fresh before its formation ran: the test does not set up a late founder")
	}
	for _, s := range s3.srv.Raft().GetConfiguration().Configuration().Servers {
		if s.Suffrage != raft.Voter {
			t.Fatalf("configuration %v: the founders are not all voters", s3.srv.Raft().GetConfiguration().Configuration())
		}
	}

	leader.kill()
	s3.form(t)
	discoverytest.WaitFor(t, fmt.Sprintf("a new leader among %s and s3", other.name), func() bool {
		return other.srv.IsLeader() || s3.srv.IsLeader()
	})
	if fresh, _ := s3.srv.Fresh(); fresh {
		t.Error("s3 is still fresh after a leader was elected")
	}
}
