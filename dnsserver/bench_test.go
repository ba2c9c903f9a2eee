package dnsserver_test

import (
	"fmt"
	"log/slog"
	"net"
	"testing"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/dnsserver"
)

// discard is a ResponseWriter that drops answers, to measure the handler
// alone.
type discard struct{ remote net.Addr }

func (d discard) LocalAddr() net.Addr         { return d.remote }
func (d discard) RemoteAddr() net.Addr        { return d.remote }
func (d discard) WriteMsg(*dns.Msg) error     { return nil }
func (d discard) Write(b []byte) (int, error) { return len(b), nil }
func (d discard) Close() error                { return nil }
func (d discard) TsigStatus() error           { return nil }
func (d discard) TsigTimersOnly(bool)         {}
func (d discard) Hijack()                     {}

// benchServer is a handler over one service of 50 passing instances.
func benchServer(b *testing.B) *dnsserver.Server {
	r := newRegistry(b)
	r.apply(node("bench", "10.9.0.1"))
	for i := range 50 {
		r.apply(instance(fmt.Sprintf("bench-%d", i), "bench", "bench", fmt.Sprintf("10.2.0.%d", i+1), 8000+i))
	}
	cfg := dnsserver.TestConfig()
	cfg.Logger = slog.New(slog.DiscardHandler)
	s, err := dnsserver.New(cfg, r.f, leases)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// transports are how the benchmarks ask: plain UDP (answers cut to 512
// bytes, TC set, as dnsperf asks by default), UDP with EDNS0 (cut to 1232),
// and TCP (whole answers).
var transports = []struct {
	name string
	w    discard
	edns uint16
}{
	{"udp", discard{udpPeer}, 0},
	{"udp-edns", discard{udpPeer}, 4096},
	{"tcp", discard{tcpPeer}, 0},
}

func benchQuery(b *testing.B, qtype uint16) {
	s := benchServer(b)
	for _, tr := range transports {
		b.Run(tr.name, func(b *testing.B) {
			m := new(dns.Msg)
			if err := m.Unpack(packQuery(b, "bench.service.sidecar.", qtype, tr.edns)); err != nil {
				b.Fatal(err)
			}
			var w dns.ResponseWriter = tr.w
			b.ReportAllocs()
			for b.Loop() {
				s.ServeDNS(w, m)
			}
		})
	}
	b.Run("udp-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			m := new(dns.Msg)
			if err := m.Unpack(packQuery(b, "bench.service.sidecar.", qtype, 0)); err != nil {
				b.Error(err)
				return
			}
			var w dns.ResponseWriter = discard{udpPeer}
			for pb.Next() {
				s.ServeDNS(w, m)
			}
		})
	})
}

// BenchmarkSRV answers SRV for a service of 50 instances.
func BenchmarkSRV(b *testing.B) { benchQuery(b, dns.TypeSRV) }

// BenchmarkA answers A for a service of 50 instances.
func BenchmarkA(b *testing.B) { benchQuery(b, dns.TypeA) }
