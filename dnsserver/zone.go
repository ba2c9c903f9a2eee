package dnsserver

import (
	"hash/fnv"
	"os"
	"strings"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/acl"
)

// zoneNode is one node of the name tree of the domain. Every name the server
// answers, and whether a name exists at all, follows from this one
// description: a query walks it from the apex down, one label at a time.
//
//   - A name that matches no path in the tree does not exist: NXDOMAIN.
//   - A name that ends at a node with an answer is looked up by that answer,
//     which gives NXDOMAIN itself when the registry has no such name (an
//     unknown service, node or election). Nothing lies below such a name
//     unless the tree says so, so NXDOMAIN is then true of the whole subtree
//     (RFC 8020).
//   - A name that ends at a node without an answer is an empty non-terminal:
//     it exists (NOERROR, no records, the SOA) exactly when some name below
//     it does, and is NXDOMAIN otherwise.
//
// Resolvers that minimise query names (RFC 9156) ask every ancestor of a
// name first, and some stop at the first NXDOMAIN: this is why an ancestor
// of an existing name must never be NXDOMAIN.
type zoneNode struct {
	// what names the node in docs and test failures: "service", "<svc>".
	what string
	// label is the node's fixed label, or "" when match decides.
	label string
	// match tells whether a (lower-case) label can name this node; only
	// for nodes without a fixed label.
	match func(label string) bool
	// answer answers a name ending at this node; nil for an empty
	// non-terminal.
	answer func(s *Server, sc *scratch, q *dns.Question, orig, rel string, n int)
	// some tells whether any name of this node exists now (any service,
	// any node, ...) that the DNS token may read (a nil a: every name);
	// nil means always. Only asked of nodes with an answer, to decide
	// whether an empty non-terminal above them exists.
	some     func(s *Server, a Authorizer) bool
	children []*zoneNode
}

// zone is sidecar's name tree below the domain:
//
//	<domain>                      SOA, NS
//	  ns                          A/AAAA of this server
//	  service                     empty non-terminal
//	    <svc>                     A, AAAA, SRV
//	      <tag>...                A, AAAA, SRV of the instances with the tags
//	    _<proto>                  empty non-terminal (_tcp, _udp, or a tag)
//	      _<svc>                  SRV (RFC 2782)
//	  node                        empty non-terminal
//	    <node>                    A, AAAA
//	  leader                      empty non-terminal
//	    <election>                A, AAAA, CNAME, SRV, TXT
//	  addr                        empty non-terminal, the SRV targets' parent
//	    <hex>                     A, AAAA of the address encoded
//
// Tag labels below <svc> may be anything and repeat: a tag filter of an
// existing service exists, even when no instance has the tag (it may get
// one). So does _<svc>._<proto> for any proto, and therefore _<proto>
// exists whenever some service does.
var zone = buildZone()

func buildZone() *zoneNode {
	tag := &zoneNode{what: "<tag>", match: anyLabel, answer: (*Server).serviceAnswer}
	tag.children = []*zoneNode{tag}
	return &zoneNode{what: "<domain>", answer: (*Server).apexAnswer, children: []*zoneNode{
		{what: "ns", label: "ns", answer: (*Server).nsAnswer},
		{what: kindService, label: kindService, children: []*zoneNode{
			{what: "<svc>", match: plainLabel, answer: (*Server).serviceAnswer, some: (*Server).anyService,
				children: []*zoneNode{tag}},
			{what: "_<proto>", match: underscoreLabel, children: []*zoneNode{
				{what: "_<svc>", match: underscoreLabel, answer: (*Server).serviceAnswer, some: (*Server).anyService},
			}},
		}},
		{what: kindNode, label: kindNode, children: []*zoneNode{
			{what: "<node>", match: anyLabel, answer: (*Server).nodeAnswerAt, some: (*Server).anyNode},
		}},
		{what: kindLeader, label: kindLeader, children: []*zoneNode{
			{what: "<election>", match: anyLabel, answer: (*Server).leaderAnswerAt, some: (*Server).anyElection},
		}},
		{what: kindAddr, label: kindAddr, children: []*zoneNode{
			// Every well-formed address has its name, registered or not.
			{what: "<hex>", match: anyLabel, answer: (*Server).addrAnswerAt},
		}},
	}}
}

func anyLabel(string) bool { return true }

// plainLabel matches labels that can be service names: those starting with
// '_' are RFC 2782's.
func plainLabel(l string) bool { return !strings.HasPrefix(l, "_") }

func underscoreLabel(l string) bool { return len(l) > 1 && l[0] == '_' }

// child returns the child of z that label names, nil when none does. Fixed
// labels win over patterns.
func (z *zoneNode) child(label string) *zoneNode {
	for _, c := range z.children {
		if c.label != "" && c.label == label {
			return c
		}
	}
	for _, c := range z.children {
		if c.label == "" && c.match(label) {
			return c
		}
	}
	return nil
}

// populated reports whether any name below z exists that a may read.
func (z *zoneNode) populated(s *Server, a Authorizer) bool {
	for _, c := range z.children {
		if c.answer != nil {
			if c.some == nil || c.some(s, a) {
				return true
			}
			continue
		}
		if c.populated(s, a) {
			return true
		}
	}
	return false
}

// walk finds the node a relative name (its n labels in sc.labels) ends at,
// nil when the tree has none.
func walk(sc *scratch, rel string, n int) *zoneNode {
	z := zone
	for i := n - 1; i >= 0 && z != nil; i-- {
		z = z.child(rel[sc.labels[i][0]:sc.labels[i][1]])
	}
	return z
}

// answer fills the reply to a name in the domain; orig is rel as queried.
func (s *Server) answer(sc *scratch, q *dns.Question, orig, rel string) {
	m := &sc.msg
	n := 0
	if rel != "" {
		var ok bool
		if n, ok = splitLabels(rel, &sc.labels); !ok {
			s.nxdomain(m)
			return
		}
	}
	z := walk(sc, rel, n)
	switch {
	case z == nil:
		s.nxdomain(m)
	case z.answer != nil:
		z.answer(s, sc, q, orig, rel, n)
	case z.populated(s, sc.authz):
		s.nodata(m)
	default:
		s.nxdomain(m)
	}
}

// anyService reports whether some service exists. Without a ServiceLister
// it says yes: a NOERROR that should have been NXDOMAIN costs a resolver a
// query, an NXDOMAIN that should not have been hides a whole subtree.
func (s *Server) anyService(a Authorizer) bool {
	if s.svcLister == nil {
		return true
	}
	return anyReadable(a, acl.Service, serviceNames(s.svcLister.Services()))
}

func (s *Server) anyNode(a Authorizer) bool {
	if s.lister == nil {
		return true
	}
	return anyReadable(a, acl.Node, func(yield func(string) bool) {
		for _, n := range s.lister.Nodes() {
			if !yield(n.Name) {
				return
			}
		}
	})
}

func (s *Server) anyElection(a Authorizer) bool {
	if s.lister == nil {
		return true
	}
	return anyReadable(a, acl.Election, func(yield func(string) bool) {
		for _, m := range s.lister.Elections() {
			if !yield(m.Name) {
				return
			}
		}
	})
}

// ServiceLister is an optional capability of a Registry, found by type
// assertion: with it, the empty non-terminals above service names
// (service.<domain>, _tcp.service.<domain>) answer NXDOMAIN when no service
// exists at all; without it they always answer NOERROR. *fsm.FSM satisfies
// it.
type ServiceLister interface {
	// Services maps every service's name to its tags.
	Services() map[string][]string
}

func (s *Server) apexAnswer(sc *scratch, q *dns.Question, _, _ string, _ int) {
	m := &sc.msg
	switch q.Qtype {
	case dns.TypeSOA, dns.TypeANY:
		m.Answer = append(m.Answer, s.soa)
	case dns.TypeNS:
		m.Answer = append(m.Answer, s.ns)
		if rr := s.nsRecord(sc, dns.TypeA); rr != nil {
			m.Extra = append(m.Extra, rr)
		}
		if rr := s.nsRecord(sc, dns.TypeAAAA); rr != nil {
			m.Extra = append(m.Extra, rr)
		}
	default:
		s.nodata(m)
	}
}

// nsAnswer answers ns.<domain>, the name server of the apex's NS record:
// this server.
func (s *Server) nsAnswer(sc *scratch, q *dns.Question, _, _ string, _ int) {
	m := &sc.msg
	switch q.Qtype {
	case dns.TypeA, dns.TypeAAAA:
		if rr := s.nsRecord(sc, q.Qtype); rr != nil {
			rr.Header().Name = q.Name
			m.Answer = append(m.Answer, rr)
		}
	case dns.TypeANY:
		s.hinfo(sc, q, ttlSeconds(s.cfg.ServiceTTL))
	}
	if len(m.Answer) == 0 {
		s.nodata(m)
	}
}

// nsRecord returns the A or AAAA record of ns.<domain>, nil when the server's
// address is of the other family.
func (s *Server) nsRecord(sc *scratch, qtype uint16) dns.RR {
	ip := s.nsIP()
	if !ip.IsValid() || ip.Is4() != (qtype == dns.TypeA) {
		return nil
	}
	return sc.addrRR(s.ns.Ns, ttlSeconds(s.cfg.ServiceTTL), ip)
}

func (s *Server) serviceAnswer(sc *scratch, q *dns.Question, _, rel string, n int) {
	s.service(sc, q, rel, n)
}

func (s *Server) nodeAnswerAt(sc *scratch, q *dns.Question, orig, rel string, _ int) {
	s.nodeAnswer(sc, q, orig[:sc.labels[0][1]], rel[:sc.labels[0][1]])
}

func (s *Server) leaderAnswerAt(sc *scratch, q *dns.Question, orig, rel string, _ int) {
	s.leaderAnswer(sc, q, orig[:sc.labels[0][1]], rel[:sc.labels[0][1]])
}

func (s *Server) addrAnswerAt(sc *scratch, q *dns.Question, _, rel string, _ int) {
	s.addrAnswer(sc, q, rel[:sc.labels[0][1]])
}

// agentSeed derives the seed of a server from its node's name, so that an
// agent keeps its choices across restarts. Without one, the host's name and
// the address served stand in: they differ between the agents of a
// cluster too.
func agentSeed(node, addr string) uint64 {
	if node == "" {
		host, _ := os.Hostname()
		node = host + "|" + addr
	}
	h := fnv.New64a()
	h.Write([]byte(node))
	return mix(h.Sum64())
}
