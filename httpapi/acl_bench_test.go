package httpapi_test

import (
	"context"
	"testing"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
)

// BenchmarkACL_lockPair measures what the ACL checks add to a lock
// acquire + release through the HTTP API of one agent, the same agent
// shape both ways, so that no difference of cluster placement hides in
// the figure (make bench compares two clusters): plain (allow, no token)
// against deny with a token whose rules grant the lock and leases.
//
//	go test -run '^$' -bench ACL_lockPair -count 5 ./httpapi
func BenchmarkACL_lockPair(b *testing.B) {
	for _, tc := range []struct {
		name string
		deny bool
	}{{"plain", false}, {"acl", true}} {
		b.Run(tc.name, func(b *testing.B) {
			a := agenttest.Start(b, func(c *agent.Config) {
				if tc.deny {
					c.ACLDefaultPolicy = "deny"
				}
			})
			c, err := api.NewClient(a.URL)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if tc.deny {
				m, err := c.ACLBootstrap(ctx)
				if err != nil {
					b.Fatal(err)
				}
				c.Token = m.Secret
				t, err := c.ACLCreateToken(ctx, api.ACLTokenRequest{Rules: []byte(`{"lock":{"bench-":"write"},"lease":"write"}`)})
				if err != nil {
					b.Fatal(err)
				}
				c.Token = t.Secret
			}
			l, err := c.GrantLease(ctx, 30e9)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r, err := c.Lock(ctx, "bench-x", api.LockRequest{Lease: l.ID})
				if err != nil || !r.Held {
					b.Fatalf("lock: %+v %v", r, err)
				}
				if err := c.UnlockToken(ctx, "bench-x", l.ID, r.Token); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
