package dnsserver

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/fsm"
)

// scratch is the working memory of one query, pooled so that the answer of a
// registry name is built without allocating: records live in the slices
// below and the answer sections point into them.
type scratch struct {
	msg      dns.Msg
	question [1]dns.Question
	answer   []dns.RR
	ns       []dns.RR
	extra    []dns.RR
	a        []dns.A
	aaaa     []dns.AAAA
	srv      []dns.SRV
	ips      []byte // backing of A and AAAA addresses
	opt      dns.OPT
	hinfo    dns.HINFO
	txt      dns.TXT
	cname    dns.CNAME
	labels   [maxLabels][2]int
	tags     []string
	cands    []candidate
	all      []pick // the matches, when not from the cache
	picks    []pick
	seen     []uint32 // by target id: gen when its address record is in
	gen      uint32
	buf      []byte // packed answer
	packed   []byte // an answer packed by packService, sent as is

	// The query being answered, who asked, and how large its answer may
	// be over UDP (0: TCP, unbounded).
	req     *dns.Msg
	w       dns.ResponseWriter
	udpSize int
	hasOpt  bool
	// authz is what the DNS token may read, nil: everything.
	authz Authorizer

	// Visit state, read by visit: VisitService takes a func, and a func
	// value built once per scratch (visitFn) does not allocate per query.
	visitFn func(in *fsm.Instance, status string)
	family  int // 4 or 6 to skip instances of the other family, else 0
}

func (s *Server) newScratch() *scratch {
	n := s.cfg.MaxRecords
	sc := &scratch{
		// Answers built as dns.Msg hold a record or two (services are
		// packed by packService from picks).
		answer: make([]dns.RR, 0, 2),
		ns:     make([]dns.RR, 0, 1),
		extra:  make([]dns.RR, 0, 2),
		a:      make([]dns.A, 0, 2),
		aaaa:   make([]dns.AAAA, 0, 2),
		srv:    make([]dns.SRV, 0, 1),
		ips:    make([]byte, 0, 32),
		tags:   make([]string, 0, 8),
		cands:  make([]candidate, 0, n),
		picks:  make([]pick, 0, n),
		seen:   make([]uint32, n),
		all:    make([]pick, 0, n),
		// 8 KB holds the largest answer of 64 records over TCP; a grown
		// buffer is kept.
		buf: make([]byte, 8192),
	}
	sc.visitFn = sc.visit
	return sc
}

// reset prepares the scratch to answer r and returns the reply, its header
// set as dns.Msg.SetReply would without allocating.
func (sc *scratch) reset(r *dns.Msg) *dns.Msg {
	m := &sc.msg
	m.MsgHdr = dns.MsgHdr{
		Id:               r.Id,
		Response:         true,
		Opcode:           r.Opcode,
		RecursionDesired: r.RecursionDesired,
		CheckingDisabled: r.CheckingDisabled,
	}
	m.Compress = true
	m.Question = sc.question[:0]
	if len(r.Question) > 0 {
		sc.question[0] = r.Question[0]
		m.Question = sc.question[:1]
	}
	m.Answer, m.Ns, m.Extra = sc.answer[:0], sc.ns[:0], sc.extra[:0]
	sc.a, sc.aaaa, sc.srv, sc.ips = sc.a[:0], sc.aaaa[:0], sc.srv[:0], sc.ips[:0]
	sc.tags, sc.cands, sc.picks = sc.tags[:0], sc.cands[:0], sc.picks[:0]
	sc.req, sc.packed, sc.udpSize, sc.hasOpt = r, nil, 0, false
	sc.all = sc.all[:0]
	return m
}

// release keeps what the sections grew to for the next query.
func (sc *scratch) release() {
	m := &sc.msg
	sc.answer, sc.ns, sc.extra = m.Answer[:0], m.Ns[:0], m.Extra[:0]
	// equivalent mutant: packed grows from buf, so equal caps mean the same array (>= for >), and append never gives a cap of exactly 2*MaxMsgSize (< for <=).
	if cap(sc.packed) > cap(sc.buf) && cap(sc.packed) <= 2*dns.MaxMsgSize {
		sc.buf = sc.packed[:cap(sc.packed)]
	}
	sc.req, sc.packed, sc.w, sc.authz = nil, nil, nil, nil
	clear(sc.cands) // drop the registry's strings
	sc.cands = sc.cands[:0]
}

func (sc *scratch) newA(name string, ttl uint32, ip netip.Addr) *dns.A {
	a4 := ip.As4()
	start := len(sc.ips)
	sc.ips = append(sc.ips, a4[:]...)
	sc.a = append(sc.a, dns.A{
		Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl},
		A:   sc.ips[start:len(sc.ips):len(sc.ips)],
	})
	return &sc.a[len(sc.a)-1]
}

func (sc *scratch) newAAAA(name string, ttl uint32, ip netip.Addr) *dns.AAAA {
	a16 := ip.As16()
	start := len(sc.ips)
	sc.ips = append(sc.ips, a16[:]...)
	sc.aaaa = append(sc.aaaa, dns.AAAA{
		Hdr:  dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: ttl},
		AAAA: sc.ips[start:len(sc.ips):len(sc.ips)],
	})
	return &sc.aaaa[len(sc.aaaa)-1]
}

// addrRR returns the A or AAAA record of ip.
func (sc *scratch) addrRR(name string, ttl uint32, ip netip.Addr) dns.RR {
	if ip.Is4() {
		return sc.newA(name, ttl, ip)
	}
	return sc.newAAAA(name, ttl, ip)
}

func (sc *scratch) newSRV(name string, ttl uint32, port uint16, tgt string) *dns.SRV {
	sc.srv = append(sc.srv, dns.SRV{
		Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: ttl},
		// A leader's answer is its one record (service answers, with
		// their weights, are packed by packService).
		Priority: 1,
		Weight:   1,
		Port:     port,
		Target:   tgt,
	})
	return &sc.srv[len(sc.srv)-1]
}

// ServeDNS answers one query. It implements dns.Handler, so it may be used
// without Start, e.g. behind another server or in tests. It is safe for
// concurrent use.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	start := time.Now()
	if r == nil || r.Response {
		return // never answer an answer: it could be a reflection loop
	}
	var qtype uint16
	if len(r.Question) > 0 {
		qtype = r.Question[0].Qtype
	}
	sc := s.pool.Get().(*scratch)
	rcode := s.serve(sc, w, r)
	sc.release()
	s.pool.Put(sc)
	s.metrics.observe(qtype, rcode, start)
}

// serve answers r and returns the response code sent.
func (s *Server) serve(sc *scratch, w dns.ResponseWriter, r *dns.Msg) int {
	m := sc.reset(r)
	tcp := isTCP(w)

	// EDNS0: echo an OPT record when the query had one, and honour its
	// buffer size up to MaxUDPSize (RFC 6891).
	udpSize := 0
	if !tcp {
		udpSize = dns.MinMsgSize
	}
	if opt := r.IsEdns0(); opt != nil {
		sc.opt = dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: uint16(s.cfg.MaxUDPSize)}}
		m.Extra = append(m.Extra, &sc.opt)
		sc.hasOpt = true
		if opt.Version() != 0 {
			m.Rcode = dns.RcodeBadVers
			return s.write(w, sc, m, udpSize)
		}
		if !tcp {
			udpSize = min(max(int(opt.UDPSize()), dns.MinMsgSize), s.cfg.MaxUDPSize)
		}
	}

	switch {
	case r.Opcode != dns.OpcodeQuery:
		m.Rcode = dns.RcodeNotImplemented
		return s.write(w, sc, m, udpSize)
	case len(r.Question) != 1:
		m.Rcode = dns.RcodeFormatError
		return s.write(w, sc, m, udpSize)
	}
	q := &r.Question[0]
	lower := lowerASCII(q.Name)
	rel, ok := s.relative(lower)
	if !ok {
		return s.forward(sc, w, r, tcp, udpSize)
	}
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		m.Rcode = dns.RcodeRefused
		return s.write(w, sc, m, udpSize)
	}
	m.Authoritative = true
	m.RecursionAvailable = len(s.cfg.Recursors) > 0
	sc.udpSize, sc.w = udpSize, w
	sc.authz = s.authorizer()
	s.answer(sc, q, q.Name[:len(rel)], rel)
	if sc.packed != nil {
		if _, err := w.Write(sc.packed); err != nil {
			s.debug("cannot write answer", "name", q.Name, "err", err)
		}
		return dns.RcodeSuccess
	}
	return s.write(w, sc, m, udpSize)
}

// relative returns a lower-case name without the domain and the dot before
// it, and whether the name is in the domain at all.
func (s *Server) relative(lower string) (string, bool) {
	d := s.cfg.Domain
	switch {
	case lower == d:
		return "", true
	case len(lower) > len(d) && strings.HasSuffix(lower, d) && lower[len(lower)-len(d)-1] == '.':
		return lower[:len(lower)-len(d)-1], true
	}
	return "", false
}

func (s *Server) nxdomain(m *dns.Msg) {
	m.Rcode = dns.RcodeNameError
	m.Ns = append(m.Ns[:0], s.soa)
}

func (s *Server) nodata(m *dns.Msg) {
	m.Rcode = dns.RcodeSuccess
	m.Answer = m.Answer[:0]
	m.Ns = append(m.Ns[:0], s.soa)
}

// hinfo answers ANY with the synthesized record of RFC 8482 section 4.2.
func (s *Server) hinfo(sc *scratch, q *dns.Question, ttl uint32) {
	sc.hinfo = dns.HINFO{
		Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeHINFO, Class: dns.ClassINET, Ttl: ttl},
		Cpu: "RFC8482",
	}
	sc.msg.Answer = append(sc.msg.Answer, &sc.hinfo)
}

func (s *Server) nodeAnswer(sc *scratch, q *dns.Question, orig, lower string) {
	m := &sc.msg
	n, ok := s.node(orig, lower)
	if !ok || !s.mayRead(sc.authz, acl.Node, n.Name, deniedNode) {
		s.nxdomain(m)
		return
	}
	ttl := ttlSeconds(s.cfg.NodeTTL)
	ip, _ := parseIP(n.Address)
	switch {
	case q.Qtype == dns.TypeA && ip.Is4(), q.Qtype == dns.TypeAAAA && ip.Is6():
		m.Answer = append(m.Answer, sc.addrRR(q.Name, ttl, ip))
	case q.Qtype == dns.TypeANY:
		s.hinfo(sc, q, ttl)
	default:
		s.nodata(m)
	}
}

func (s *Server) addrAnswer(sc *scratch, q *dns.Question, label string) {
	m := &sc.msg
	ip, ok := parseAddrLabel(label)
	if !ok {
		s.nxdomain(m)
		return
	}
	ttl := ttlSeconds(s.cfg.ServiceTTL)
	switch {
	case q.Qtype == dns.TypeA && ip.Is4(), q.Qtype == dns.TypeAAAA && ip.Is6():
		m.Answer = append(m.Answer, sc.addrRR(q.Name, ttl, ip))
	case q.Qtype == dns.TypeANY:
		s.hinfo(sc, q, ttl)
	default:
		s.nodata(m)
	}
}

// leaderAnswer answers <election>.leader from the leader's value, host:port.
func (s *Server) leaderAnswer(sc *scratch, q *dns.Question, orig, lower string) {
	m := &sc.msg
	el, ok := s.election(orig, lower)
	if !ok || !s.mayRead(sc.authz, acl.Election, el.Name, deniedElection) {
		s.nxdomain(m)
		return
	}
	h := el.Holder
	if h == nil {
		s.nodata(m) // vacant: the name exists, no leader to give
		return
	}
	ttl := s.leaderTTL(h.Lease)
	host, port, hasPort := splitValue(h.Value)
	if host == "" && h.Node != "" {
		// A value of ":port" (or none) means the leader's own node.
		if n, ok := s.reg.Node(h.Node); ok {
			host = n.Address
		}
	}
	ip, isIP := parseIP(host)
	switch q.Qtype {
	case dns.TypeA, dns.TypeAAAA:
		switch {
		case isIP && ip.Is4() == (q.Qtype == dns.TypeA):
			m.Answer = append(m.Answer, sc.addrRR(q.Name, ttl, ip))
		case !isIP:
			if name := hostTarget(host); name != "" {
				sc.cname = dns.CNAME{
					Hdr:    dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: ttl},
					Target: name,
				}
				m.Answer = append(m.Answer, &sc.cname)
			}
		}
	case dns.TypeSRV:
		if !hasPort || host == "" {
			break
		}
		var t target
		if isIP {
			t = s.targets.addrTarget(host)
		} else {
			t.name = hostTarget(host)
		}
		if t.name == "" {
			break
		}
		m.Answer = append(m.Answer, sc.newSRV(q.Name, ttl, port, t.name))
		if t.ip.IsValid() {
			m.Extra = append(m.Extra, sc.addrRR(t.name, ttl, t.ip))
		}
	case dns.TypeTXT:
		sc.txt = dns.TXT{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: ttl},
			Txt: []string{"token=" + strconv.FormatUint(h.Token, 10)},
		}
		m.Answer = append(m.Answer, &sc.txt)
	case dns.TypeANY:
		s.hinfo(sc, q, ttl)
	}
	if len(m.Answer) == 0 {
		s.nodata(m)
	}
}

// leaderTTL is LeaderTTL capped by the time the lease is surely live, 0
// when that is unknown.
func (s *Server) leaderTTL(lease string) uint32 {
	if s.leases == nil {
		return 0
	}
	left, ok := s.leases.LeaseRemaining(lease)
	if !ok {
		return 0
	}
	return ttlSeconds(min(left, s.cfg.LeaderTTL))
}

// splitValue splits a leader value "host:port" (or "[v6]:port", or a bare
// host).
func splitValue(v string) (host string, port uint16, ok bool) {
	h, p, err := net.SplitHostPort(v)
	if err != nil {
		return strings.Trim(v, "[]"), 0, false
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return h, 0, false
	}
	return h, uint16(n), true
}

// isTCP reports whether w answers over TCP; anything else is treated as a
// datagram transport, whose answers must fit.
func isTCP(w dns.ResponseWriter) bool {
	_, ok := w.RemoteAddr().(*net.TCPAddr)
	return ok
}

// write packs the reply, truncating it to udpSize (0: no limit) with TC set
// when it does not fit, sends it and returns its rcode.
func (s *Server) write(w dns.ResponseWriter, sc *scratch, m *dns.Msg, udpSize int) int {
	buf, err := m.PackBuffer(sc.buf[:cap(sc.buf)])
	// equivalent mutant: at len(buf) == udpSize, Truncate leaves a message that fits as it is (>= for >).
	if err == nil && udpSize > 0 && len(buf) > udpSize {
		m.Truncate(udpSize)
		buf, err = m.PackBuffer(sc.buf[:cap(sc.buf)])
	}
	if err != nil {
		s.log.Warn("cannot pack answer", "name", questionName(m), "err", err)
		m.Rcode = dns.RcodeServerFailure
		m.Answer, m.Ns = m.Answer[:0], m.Ns[:0]
		opt := m.IsEdns0()
		m.Extra = m.Extra[:0]
		if opt != nil {
			m.Extra = append(m.Extra, opt)
		}
		if buf, err = m.PackBuffer(sc.buf[:cap(sc.buf)]); err != nil {
			return m.Rcode
		}
	}
	// equivalent mutant: answers packed here (all but services) stay far below the 8 KB buffer, so PackBuffer returns that very array: keeping it or not is the same.
	if cap(buf) > cap(sc.buf) && cap(buf) <= 2*dns.MaxMsgSize {
		sc.buf = buf[:cap(buf)] // keep the grown buffer for the next answers
	}
	if _, err := w.Write(buf); err != nil {
		s.debug("cannot write answer", "name", questionName(m), "err", err)
	}
	return m.Rcode
}

func questionName(m *dns.Msg) string {
	if len(m.Question) == 0 {
		return ""
	}
	return m.Question[0].Name
}
