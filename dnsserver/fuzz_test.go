package dnsserver_test

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/dnsserver"
)

// recorder is a dns.ResponseWriter that keeps what the handler writes.
type recorder struct {
	tcp    bool
	remote net.Addr // the asker; nil: udpPeer or tcpPeer
	writes [][]byte
}

var (
	udpPeer = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
	tcpPeer = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
)

func (r *recorder) LocalAddr() net.Addr {
	if r.tcp {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}

func (r *recorder) RemoteAddr() net.Addr {
	if r.remote != nil {
		return r.remote
	}
	if r.tcp {
		return tcpPeer
	}
	return udpPeer
}

func (r *recorder) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = r.Write(b)
	return err
}

func (r *recorder) Write(b []byte) (int, error) {
	r.writes = append(r.writes, append([]byte(nil), b...))
	return len(b), nil
}

func (r *recorder) Close() error        { return nil }
func (r *recorder) TsigStatus() error   { return nil }
func (r *recorder) TsigTimersOnly(bool) {}
func (r *recorder) Hijack()             {}

func packQuery(tb testing.TB, name string, qtype uint16, edns uint16) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	b, err := m.Pack()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// FuzzServeDNS feeds arbitrary bytes as a query: to the handler directly
// whenever miekg/dns parses them, and to the running server as a datagram.
// Nothing may panic, every answer must parse and fit the UDP size, and the
// server must answer a valid query afterwards.
func FuzzServeDNS(f *testing.F) {
	fx := newFixture(f)
	up := startUpstream(f, dns.RcodeSuccess)
	cfg := dnsserver.TestConfig()
	cfg.Recursors = []string{up.addr}
	s, _ := startServer(f, cfg, fx.reg.f)
	conn, err := net.Dial("udp", s.Addr())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { conn.Close() })

	for _, q := range []struct {
		name  string
		qtype uint16
		edns  uint16
	}{
		{"web.service.sidecar.", dns.TypeSRV, 0},
		{"_web._tcp.service.sidecar.", dns.TypeSRV, 1232},
		{"primary.v1.web.service.sidecar.", dns.TypeA, 0},
		{"big.service.sidecar.", dns.TypeSRV, 4096},
		{"big.service.sidecar.", dns.TypeA, 100},
		{"node1.node.sidecar.", dns.TypeA, 0},
		{"Node6.NODE.sidecar.", dns.TypeAAAA, 0},
		{"lead.leader.sidecar.", dns.TypeTXT, 0},
		{"leadhost.leader.sidecar.", dns.TypeA, 0},
		{"0a000101.addr.sidecar.", dns.TypeA, 0},
		{"web.service.sidecar.", dns.TypeANY, 0},
		{"sidecar.", dns.TypeSOA, 0},
		{"a\\.b.service.sidecar.", dns.TypeA, 0},
		{"example.com.", dns.TypeA, 0},
		{"big.example.com.", dns.TypeTXT, 0},
	} {
		f.Add(packQuery(f, q.name, q.qtype, q.edns))
	}
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	// A name that is a compression pointer to itself.
	f.Add([]byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1})
	// Two questions.
	two := packQuery(f, "web.service.sidecar.", dns.TypeA, 0)
	two[5] = 2
	f.Add(append(two, two[12:]...))
	// EDNS version 1.
	v1 := new(dns.Msg)
	v1.SetQuestion("web.service.sidecar.", dns.TypeA)
	v1.SetEdns0(1232, false)
	v1.IsEdns0().SetVersion(1)
	if b, err := v1.Pack(); err == nil {
		f.Add(b)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		var m dns.Msg
		if m.Unpack(data) == nil {
			for _, tcp := range []bool{false, true} {
				w := &recorder{tcp: tcp}
				s.ServeDNS(w, &m)
				if len(w.writes) > 1 {
					t.Fatalf("%d answers to one query", len(w.writes))
				}
				if len(w.writes) == 0 {
					if !m.Response {
						t.Fatalf("no answer to a query")
					}
					continue
				}
				var resp dns.Msg
				if err := resp.Unpack(w.writes[0]); err != nil {
					t.Fatalf("answer does not parse: %v", err)
				}
				if resp.Id != m.Id || !resp.Response {
					t.Fatalf("answer id %d response %v to query id %d", resp.Id, resp.Response, m.Id)
				}
				if limit := udpLimit(&m); !tcp && len(w.writes[0]) > limit {
					t.Fatalf("UDP answer of %d bytes, limit %d", len(w.writes[0]), limit)
				}
			}
		}

		if _, err := conn.Write(data); err != nil {
			t.Fatalf("send: %v", err)
		}

		c := &dns.Client{Timeout: 5 * time.Second}
		q := new(dns.Msg)
		q.SetQuestion("web.service.sidecar.", dns.TypeSRV)
		resp, _, err := c.Exchange(q, s.Addr())
		if err != nil || resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 4 {
			t.Fatalf("server no longer answers: %v, %v", resp, err)
		}
	})
}

// udpLimit is the largest UDP answer a query allows from a server with
// MaxUDPSize 1232.
func udpLimit(m *dns.Msg) int {
	if opt := m.IsEdns0(); opt != nil {
		return min(max(int(opt.UDPSize()), 512), 1232)
	}
	return 512
}
