package agent_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/discovery"
)

// cutOffWatch polls, every 5 ms until stopped, how each agent's gossip
// sees every name: a member that cannot decrypt the others' messages (or
// they its) stops answering probes and is declared failed within a
// second or two with the test timings, which this catches.
type cutOffWatch struct {
	mu     sync.Mutex
	agents []*agenttest.Agent
	names  []string
	bad    []string
	done   chan struct{}
	wg     sync.WaitGroup
}

func watchCutOff(agents []*agenttest.Agent) *cutOffWatch {
	w := &cutOffWatch{agents: slices.Clone(agents), done: make(chan struct{})}
	for _, a := range agents {
		w.names = append(w.names, a.Node())
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.done:
				return
			case <-tick.C:
			}
			w.mu.Lock()
			for _, a := range w.agents {
				for _, n := range w.names {
					if m, ok := a.Gossip().Member(n); !ok || m.Status != discovery.StatusAlive {
						w.bad = append(w.bad, a.Node()+" saw "+n+" as "+string(m.Status))
					}
				}
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// add watches one more agent, once every watched agent sees it alive.
func (w *cutOffWatch) add(a *agenttest.Agent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.agents = append(w.agents, a)
	w.names = append(w.names, a.Node())
}

func (w *cutOffWatch) stop() []string {
	close(w.done)
	w.wg.Wait()
	return w.bad
}

// allAlive reports whether every agent sees every other one alive.
func allAlive(agents []*agenttest.Agent) bool {
	for _, a := range agents {
		for _, b := range agents {
			if m, ok := a.Gossip().Member(b.Node()); !ok || m.Status != discovery.StatusAlive {
				return false
			}
		}
	}
	return true
}

// SPEC: gossip keys rotate without downtime. Five agents share one key; a
// new key is installed on all, used, and the old one removed, through the
// HTTP API of different agents, while every agent keeps seeing all five
// alive; a newcomer holding only the new key joins; and an agent restarted
// on its data dir, with the old key still in its --encrypt (a stale
// flag), comes back with the keys it had.
func TestKeyring_rotationAcrossFiveAgents(t *testing.T) {
	oldKey, newKey := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	oldB64, newB64 := base64.StdEncoding.EncodeToString(oldKey), base64.StdEncoding.EncodeToString(newKey)
	withKey := func(k []byte) func(*agent.Config) { return func(c *agent.Config) { c.EncryptKey = k } }

	servers := agenttest.Cluster(t, 3, withKey(oldKey))
	dir := t.TempDir()
	clientCfg := func(c *agent.Config) { c.EncryptKey, c.DataDir = oldKey, dir }
	c0 := agenttest.Join(t, servers[0], "client-0", false, clientCfg)
	c1 := agenttest.Join(t, servers[1], "client-1", false, withKey(oldKey))
	all := append(slices.Clone(servers), c0, c1)
	for _, a := range all {
		a.WaitReady(30 * time.Second)
	}
	agenttest.WaitFor(t, 30*time.Second, "all five alive everywhere", func() bool { return allAlive(all) })

	watch := watchCutOff(all)
	ctx := context.Background()
	steps := []struct {
		via  *agenttest.Agent
		req  api.KeyringRequest
		want []string // every member's keys afterwards, primary first
	}{
		{servers[1], api.KeyringRequest{Install: newB64}, []string{oldB64, newB64}},
		{c1, api.KeyringRequest{Use: newB64}, []string{newB64, oldB64}},
		{servers[2], api.KeyringRequest{Remove: oldB64}, []string{newB64}},
	}
	for _, s := range steps {
		resp, err := client(t, s.via).KeyringChange(ctx, s.req)
		if err != nil {
			t.Fatalf("%+v through %s: %v", s.req, s.via.Node(), err)
		}
		if resp.Members != 5 || len(resp.Failed) != 0 || len(resp.Nodes) != 5 {
			t.Fatalf("%s: %d members, failed %v", resp.Op, resp.Members, resp.Failed)
		}
		for _, n := range resp.Nodes {
			if !slices.Equal(n.Keys, s.want) {
				t.Fatalf("%s: %s holds %v, want %v", resp.Op, n.Node, n.Keys, s.want)
			}
		}
		t.Logf("%s through %s: done on all 5 members", resp.Op, s.via.Node())
	}
	kr, err := client(t, c0).Keyring(ctx)
	if err != nil || len(kr.Keys) != 1 || kr.Keys[0] != (api.KeyringKey{Key: newB64, Members: 5, Primary: 5}) {
		t.Fatalf("keyring after the rotation: %+v, %v", kr, err)
	}

	// A newcomer that only knows the new key.
	fresh := agenttest.Join(t, servers[0], "client-new", false, withKey(newKey))
	fresh.WaitReady(30 * time.Second)
	all = append(all, fresh)
	agenttest.WaitFor(t, 30*time.Second, "the newcomer alive everywhere", func() bool { return allAlive(all) })
	watch.add(fresh)
	if bad := watch.stop(); len(bad) > 0 {
		t.Fatalf("members cut off during the rotation (%d observations), first: %v", len(bad), bad[:min(len(bad), 5)])
	}

	// Restart client-0 on its data dir, still given the old key.
	if st, err := os.Stat(filepath.Join(dir, discovery.KeyringFileName)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("keyring file in the data dir: %v, %v", st, err)
	}
	c0.Stop()
	c0 = agenttest.Join(t, servers[1], "client-0", false, clientCfg)
	c0.WaitReady(30 * time.Second)
	all[3] = c0
	agenttest.WaitFor(t, 30*time.Second, "restarted client-0 alive everywhere", func() bool { return allAlive(all) })
	if got, err := c0.Gossip().LocalKeyring(); err != nil || !slices.Equal(got.Keys, []string{newB64}) {
		t.Fatalf("restarted client-0 holds %v, %v; want only the new key", got.Keys, err)
	}
}
