package dnsserver_test

import (
	"errors"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/dnsserver"
)

// TestDefaultConfig pins the defaults the docs promise (SPEC.md's DNS
// section): an operator who sets nothing gets exactly these.
func TestDefaultConfig(t *testing.T) {
	c := dnsserver.DefaultConfig()
	for _, tc := range []struct {
		field     string
		got, want any
	}{
		{"Addr", c.Addr, "127.0.0.1:7053"},
		{"Domain", c.Domain, "sidecar."},
		{"Recursors", len(c.Recursors), 0},
		{"RecursorTimeout", c.RecursorTimeout, 2 * time.Second},
		{"ServiceTTL", c.ServiceTTL, 5 * time.Second},
		{"NodeTTL", c.NodeTTL, 5 * time.Second},
		{"LeaderTTL", c.LeaderTTL, 5 * time.Second},
		{"MaxRecords", c.MaxRecords, 64},
		{"MaxUDPSize", c.MaxUDPSize, 1232},
	} {
		if tc.got != tc.want {
			t.Errorf("DefaultConfig().%s = %v, want %v", tc.field, tc.got, tc.want)
		}
	}
	tc := dnsserver.TestConfig()
	if tc.Addr != "127.0.0.1:0" || tc.RecursorTimeout != 250*time.Millisecond || tc.MaxRecords != 64 {
		t.Errorf("TestConfig() = %+v", tc)
	}
}

// TestNew_configBounds: each limit of Config is inclusive at both ends, and
// one step past it is rejected with ErrConfig.
func TestNew_configBounds(t *testing.T) {
	const week = 7 * 24 * time.Hour
	fx := newFixture(t)
	for _, tc := range []struct {
		name string
		mod  func(*dnsserver.Config)
		ok   bool
	}{
		{"service TTL 0", func(c *dnsserver.Config) { c.ServiceTTL = 0 }, true},
		{"node TTL 0", func(c *dnsserver.Config) { c.NodeTTL = 0 }, true},
		{"leader TTL 0", func(c *dnsserver.Config) { c.LeaderTTL = 0 }, true},
		{"service TTL a week", func(c *dnsserver.Config) { c.ServiceTTL = week }, true},
		{"node TTL a week", func(c *dnsserver.Config) { c.NodeTTL = week }, true},
		{"leader TTL a week", func(c *dnsserver.Config) { c.LeaderTTL = week }, true},
		{"service TTL past a week", func(c *dnsserver.Config) { c.ServiceTTL = week + time.Second }, false},
		{"node TTL past a week", func(c *dnsserver.Config) { c.NodeTTL = week + time.Second }, false},
		{"leader TTL negative", func(c *dnsserver.Config) { c.LeaderTTL = -time.Nanosecond }, false},
		{"max records 1", func(c *dnsserver.Config) { c.MaxRecords = 1 }, true},
		{"max records 1000", func(c *dnsserver.Config) { c.MaxRecords = 1000 }, true},
		{"max records 1001", func(c *dnsserver.Config) { c.MaxRecords = 1001 }, false},
		{"max UDP size 512", func(c *dnsserver.Config) { c.MaxUDPSize = 512 }, true},
		{"max UDP size 511", func(c *dnsserver.Config) { c.MaxUDPSize = 511 }, false},
		{"max UDP size 65535", func(c *dnsserver.Config) { c.MaxUDPSize = 65535 }, true},
		{"max UDP size 65536", func(c *dnsserver.Config) { c.MaxUDPSize = 65536 }, false},
		// The timeout only matters to recursors.
		{"no recursors, no timeout", func(c *dnsserver.Config) { c.RecursorTimeout = 0 }, true},
		{"recursor, negative timeout", func(c *dnsserver.Config) { c.Recursors = []string{"10.0.0.53"}; c.RecursorTimeout = -1 }, false},
		{"blank recursors are dropped", func(c *dnsserver.Config) { c.Recursors = []string{" ", ""}; c.RecursorTimeout = 0 }, true},
		{"bad recursor", func(c *dnsserver.Config) { c.Recursors = []string{"10.0]0.0.53"} }, false},
		{"domain with an escape", func(c *dnsserver.Config) { c.Domain = `a\.b.` }, false},
		{"NS address not an IP", func(c *dnsserver.Config) { c.NSAddr = "ns.example.com" }, false},
		{"NS address", func(c *dnsserver.Config) { c.NSAddr = "10.0.0.53" }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := dnsserver.TestConfig()
			tc.mod(&cfg)
			_, err := dnsserver.New(cfg, fx.reg.f, nil)
			switch {
			case tc.ok && err != nil:
				t.Errorf("New: %v, want it accepted", err)
			case !tc.ok && !errors.Is(err, dnsserver.ErrConfig):
				t.Errorf("New: %v, want ErrConfig", err)
			}
		})
	}
}

// TestServer_configuredLimits: the limits at their extremes show in the
// answers: TTLs of 0 and of a week, one record per answer, and a 512-byte
// UDP size, which the server advertises in its OPT record.
func TestServer_configuredLimits(t *testing.T) {
	const week = 7 * 24 * time.Hour
	fx := newFixture(t)
	newServer := func(mod func(*dnsserver.Config)) *dnsserver.Server {
		t.Helper()
		cfg := dnsserver.TestConfig()
		mod(&cfg)
		s, err := dnsserver.New(cfg, fx.reg.f, leases)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	ttls := func(m *dns.Msg) []uint32 {
		var out []uint32
		for _, rr := range append(append(append([]dns.RR(nil), m.Answer...), m.Ns...), m.Extra...) {
			if rr.Header().Rrtype != dns.TypeOPT {
				out = append(out, rr.Header().Ttl)
			}
		}
		return out
	}

	t.Run("TTL 0: never cached", func(t *testing.T) {
		s := newServer(func(c *dnsserver.Config) { c.ServiceTTL, c.NodeTTL = 0, 0 })
		for _, q := range []struct {
			name  string
			qtype uint16
		}{
			{"web.service.sidecar.", dns.TypeSRV}, {"node1.node.sidecar.", dns.TypeA}, {"0a000101.addr.sidecar.", dns.TypeA},
		} {
			resp := ask(t, s, q.name, q.qtype)
			if len(resp.Answer) == 0 {
				t.Fatalf("%s: no answer", q.name)
			}
			for _, ttl := range ttls(resp) {
				if ttl != 0 {
					t.Errorf("%s: TTL %d with TTLs of 0: %v", q.name, ttl, resp)
				}
			}
		}
		// The SOA's minimum is the negative-caching TTL.
		resp := ask(t, s, "nosuch.service.sidecar.", dns.TypeA)
		if len(resp.Ns) != 1 || resp.Ns[0].Header().Ttl != 0 || resp.Ns[0].(*dns.SOA).Minttl != 0 {
			t.Errorf("NXDOMAIN authority with TTLs of 0: %v", resp.Ns)
		}
	})

	t.Run("TTL a week", func(t *testing.T) {
		s := newServer(func(c *dnsserver.Config) { c.ServiceTTL, c.NodeTTL, c.LeaderTTL = week, week, week })
		// The leader's lease (a minute) still caps its TTL.
		for name, want := range map[string]uint32{
			"web.service.sidecar.": 604800, "node1.node.sidecar.": 604800, "lead.leader.sidecar.": 60,
		} {
			resp := ask(t, s, name, dns.TypeA)
			if got := ttls(resp); len(got) == 0 || got[0] != want {
				t.Errorf("%s: TTLs %v, want %d", name, got, want)
			}
		}
	})

	t.Run("one record per answer", func(t *testing.T) {
		s := newServer(func(c *dnsserver.Config) { c.MaxRecords = 1 })
		for _, qtype := range []uint16{dns.TypeA, dns.TypeSRV} {
			resp := askFrom(t, s, tcpPeer, "web.service.sidecar.", qtype)
			if len(resp.Answer) != 1 {
				t.Errorf("%s: %d records, want 1 (MaxRecords)", dns.TypeToString[qtype], len(resp.Answer))
			}
		}
	})

	t.Run("UDP size 512", func(t *testing.T) {
		s := newServer(func(c *dnsserver.Config) { c.MaxUDPSize = 512 })
		q := new(dns.Msg)
		q.SetQuestion("big.service.sidecar.", dns.TypeA)
		q.SetEdns0(4096, false)
		rec := &recorder{}
		s.ServeDNS(rec, q)
		resp := new(dns.Msg)
		if err := resp.Unpack(rec.writes[0]); err != nil {
			t.Fatal(err)
		}
		if len(rec.writes[0]) > 512 || !resp.Truncated {
			t.Errorf("answer of %d bytes, TC %v: want at most 512, truncated", len(rec.writes[0]), resp.Truncated)
		}
		if opt := resp.IsEdns0(); opt == nil || opt.UDPSize() != 512 {
			t.Errorf("OPT %v, want size 512 advertised", opt)
		}
	})
}
