package discoverytest_test

import (
	"fmt"
	"testing"

	"github.com/sidecarhq/sidecar/discovery"
	"github.com/sidecarhq/sidecar/discovery/discoverytest"
)

func TestMain(m *testing.M) {
	discoverytest.VerifyTestMain(m)
}

func TestNewCluster(t *testing.T) {
	nodes := discoverytest.NewCluster(t, 3, func(i int, c *discovery.Config) {
		c.Meta = discovery.Meta{Role: discovery.RoleServer, RaftAddr: fmt.Sprintf("127.0.0.1:%d", 18000+i)}
	})
	for _, g := range nodes {
		ms := g.Members()
		if len(ms) != 3 {
			t.Fatalf("%s sees %d members", g.LocalMember().Name, len(ms))
		}
		for i, m := range ms {
			if m.Name != fmt.Sprintf("node%d", i) || !m.Meta.IsServer() || m.Meta.RaftAddr != fmt.Sprintf("127.0.0.1:%d", 18000+i) {
				t.Errorf("%s sees %+v", g.LocalMember().Name, m)
			}
		}
	}
	if err := nodes[2].Shutdown(); err != nil {
		t.Fatal(err)
	}
	discoverytest.WaitStatus(t, nodes[:2], discovery.StatusFailed, "node2")
}
