package dnsserver

import (
	"math"
	"math/rand/v2"
	"strings"
	"sync"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/fsm"
)

// candidate is a passing instance that matches a query, as visited. Its
// strings point into the registry's instance, which is fine: strings are
// immutable.
type candidate struct {
	addr string // "" uses the node's address
	node string
	port uint16
}

// pick is one record of a service answer: an instance resolved to its SRV
// target and address.
type pick struct {
	t    target
	ttl  uint32 // of the target's address record
	port uint16
	tid  int32 // the same for picks of the same target, below the list's length
	off  int   // where packService packed the SRV target, -1 when it did not
}

// visit is the VisitService callback. It keeps a uniform random sample of at
// most sc.max matching passing instances (reservoir sampling), so that a
// service larger than the cap spreads its load over every instance.
func (sc *scratch) visit(in *fsm.Instance, status string) {
	if status != fsm.StatusPassing || !hasTags(in.Tags, sc.tags) {
		return
	}
	if in.Address != "" {
		v6 := strings.IndexByte(in.Address, ':') >= 0
		if sc.family == 4 && v6 || sc.family == 6 && !v6 {
			return
		}
	}
	sc.matching++
	c := candidate{addr: in.Address, node: in.Node, port: uint16(in.Port)}
	if len(sc.cands) < sc.max {
		sc.cands = append(sc.cands, c)
	} else if j := rand.IntN(sc.matching); j < sc.max {
		sc.cands[j] = c
	}
}

// hasTags reports whether every wanted tag (lower-case) is among tags.
func hasTags(tags, want []string) bool {
outer:
	for _, w := range want {
		for _, t := range tags {
			if strings.EqualFold(t, w) {
				continue outer
			}
		}
		return false
	}
	return true
}

// service answers <svc>.service, _<svc>._<proto>.service and the tagged
// forms.
func (s *Server) service(sc *scratch, q *dns.Question, rel string, n int) {
	m := &sc.msg
	label := func(i int) string { return rel[sc.labels[i][0]:sc.labels[i][1]] }
	key := svcKey{}
	if l0, l1 := label(0), label(1); n == 3 && len(l0) > 1 && l0[0] == '_' && len(l1) > 1 && l1[0] == '_' {
		// RFC 2782: _<svc>._<proto>. A protocol other than tcp or udp is
		// a tag, as in Consul.
		key.name = l0[1:]
		if proto := l1[1:]; proto != "tcp" && proto != "udp" {
			sc.tags = append(sc.tags, proto)
			key.tags = l1
		}
	} else {
		key.name = label(n - 2)
		for i := 0; i < n-2; i++ {
			sc.tags = append(sc.tags, label(i))
		}
		if n > 2 {
			key.tags = rel[:sc.labels[n-2][0]-1]
		}
	}
	switch q.Qtype {
	case dns.TypeA:
		key.family = 4
	case dns.TypeAAAA:
		key.family = 6
	}

	exists, all := s.matches(sc, key)
	switch {
	case !exists:
		s.nxdomain(m)
		return
	case q.Qtype == dns.TypeANY:
		s.hinfo(sc, q, ttlSeconds(s.cfg.ServiceTTL))
		return
	case q.Qtype != dns.TypeA && q.Qtype != dns.TypeAAAA && q.Qtype != dns.TypeSRV:
		s.nodata(m)
		return
	}
	sc.sample(all, s.cfg.MaxRecords)
	picks := sc.picks
	for i := len(picks) - 1; i > 0; i-- {
		j := rand.IntN(i + 1)
		picks[i], picks[j] = picks[j], picks[i]
	}
	if b, ok := s.packService(sc, q); ok {
		sc.packed = b
		return
	}
	s.nodata(m)
}

// matches returns whether a service exists and the records of its passing
// instances that match key: every one of them from the cache when the
// registry can tell when it changes, else a random sample of at most
// MaxRecords read now.
func (s *Server) matches(sc *scratch, key svcKey) (bool, []pick) {
	sc.family, sc.matching = key.family, 0
	if s.watcher == nil {
		sc.max = s.cfg.MaxRecords
		exists := s.reg.VisitService(key.name, sc.visitFn)
		sc.picks = usable(s.resolve(sc.picks[:0], sc.cands), key.family)
		return exists, sc.picks
	}
	if e := s.services.get(key); e != nil {
		return e.exists, e.picks
	}
	// Watch before reading, so that a change during the read makes the
	// entry stale at once.
	valid := s.watcher.Watch()
	sc.max = math.MaxInt
	exists := s.reg.VisitService(key.name, sc.visitFn)
	sc.max = s.cfg.MaxRecords
	picks := usable(s.resolve(make([]pick, 0, len(sc.cands)), sc.cands), key.family)
	clear(sc.cands) // drop the registry's strings from the pool
	s.services.put(key, &svcEntry{valid: valid, exists: exists, picks: picks})
	return exists, picks
}

// usable drops in place the picks that cannot give a record: targets that
// cannot be packed, and for A and AAAA (family 4, 6) targets without an
// address of that family. Sampling then only ever picks records.
func usable(picks []pick, family int) []pick {
	out := picks[:0]
	for _, p := range picks {
		switch {
		case p.t.wire == "":
		case family == 4 && !(p.t.ip.IsValid() && p.t.ip.Is4()):
		case family == 6 && !(p.t.ip.IsValid() && p.t.ip.Is6()):
		default:
			out = append(out, p)
		}
	}
	return out
}

// sample copies into sc.picks all of all, or k of them chosen uniformly at
// random (Floyd's algorithm) when there are more.
func (sc *scratch) sample(all []pick, k int) {
	n := len(all)
	if n <= k {
		sc.picks = append(sc.picks[:0], all...)
		return
	}
	clear(sc.chosen)
	sc.picks = sc.picks[:0]
	for j := n - k; j < n; j++ {
		t := rand.IntN(j + 1)
		if !sc.choose(t) {
			sc.choose(j)
			t = j
		}
		sc.picks = append(sc.picks, all[t])
	}
}

// choose adds index i to the sampled set; false when it was there.
func (sc *scratch) choose(i int) bool {
	mask := len(sc.chosen) - 1
	h := (i * 0x9E3779B1) & mask
	for {
		switch v := int(sc.chosen[h]); v {
		case 0:
			sc.chosen[h] = int32(i + 1)
			return true
		case i + 1:
			return false
		}
		h = (h + 1) & mask
	}
}

// firstExtra reports whether the target of a pick is seen for the first
// time in the answer being packed, so that the additional section lists
// each target once.
func (sc *scratch) firstExtra(p *pick) bool {
	if int(p.tid) >= len(sc.seen) {
		sc.seen = append(sc.seen, make([]uint32, int(p.tid)+1-len(sc.seen))...)
	}
	if sc.seen[p.tid] == sc.gen {
		return false
	}
	sc.seen[p.tid] = sc.gen
	return true
}

// newAnswer starts the additional-record bookkeeping of an answer.
func (sc *scratch) newAnswer() {
	sc.gen++
	if sc.gen == 0 { // wrapped: old marks could collide
		clear(sc.seen)
		sc.gen = 1
	}
}

// resolve appends to dst the record of each candidate: its address's target,
// or its node's when it has no address of its own.
func (s *Server) resolve(dst []pick, cands []candidate) []pick {
	c := s.targets
	svcTTL := ttlSeconds(s.cfg.ServiceTTL)
	base := len(dst)
	c.mu.RLock()
	for i := range cands {
		p := pick{port: cands[i].port, off: -1}
		if a := cands[i].addr; a != "" {
			if t, ok := c.addrs[a]; ok {
				p.t, p.ttl = t, svcTTL
			} else {
				p.off = -2 // resolved below, out of the read lock
			}
		}
		dst = append(dst, p)
	}
	c.mu.RUnlock()
	var nodes map[string]target
	for i := range cands {
		p := &dst[base+i]
		switch {
		case p.off == -2:
			p.t, p.ttl, p.off = c.addrTarget(cands[i].addr), svcTTL, -1
		case cands[i].addr == "":
			// Each node is read once per answer.
			t, ok := nodes[cands[i].node]
			if !ok {
				t = c.nodeTarget(cands[i].node)
				if n, ok := s.reg.Node(cands[i].node); ok {
					t.ip, _ = parseIP(n.Address)
				}
				if nodes == nil {
					nodes = map[string]target{}
				}
				nodes[cands[i].node] = t
			}
			p.t, p.ttl = t, ttlSeconds(s.cfg.NodeTTL)
		}
	}
	// Number the distinct targets, for firstExtra.
	tids := make(map[string]int32, len(cands))
	for i := base; i < len(dst); i++ {
		id, ok := tids[dst[i].t.name]
		if !ok {
			id = int32(len(tids))
			tids[dst[i].t.name] = id
		}
		dst[i].tid = id
	}
	return dst
}

// Watcher is an optional capability of a Registry, found by type assertion:
// Watch returns a channel closed at the next change of anything
// VisitService or Node reads. With it, the matches of a service query are
// kept until the registry changes, so that a query neither visits every
// instance nor resolves its address. *fsm.FSM satisfies it.
type Watcher interface {
	Watch() <-chan struct{}
}

// svcKey is what a service query's matches depend on.
type svcKey struct {
	name   string // service, lower-case
	tags   string // tag labels as queried, lower-case ("primary.v1", "_primary")
	family int    // 4 or 6 for A and AAAA, else 0
}

// svcEntry is the matches of a service query, read while valid was open.
type svcEntry struct {
	valid  <-chan struct{}
	exists bool
	picks  []pick // every match; shared, never modified
}

// svcCache keeps svcEntries. Its size is bounded in records, so that queries
// for many tag combinations of a large service cannot grow it without end.
type svcCache struct {
	mu   sync.RWMutex
	m    map[svcKey]*svcEntry
	size int // records held, plus one per entry
}

// maxCachedRecords bounds the cache to about 5 MB: thousands of distinct
// queries of typical services, or one query of a very large one. Beyond it
// the cache starts over.
const maxCachedRecords = 1 << 16

// get returns the entry of key while the registry has not changed since it
// was read.
func (c *svcCache) get(key svcKey) *svcEntry {
	c.mu.RLock()
	e := c.m[key]
	c.mu.RUnlock()
	if e == nil {
		return nil
	}
	select {
	case <-e.valid:
		return nil
	default:
		return e
	}
}

func (c *svcCache) put(key svcKey, e *svcEntry) {
	cost := len(e.picks) + 1
	if cost > maxCachedRecords {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[svcKey]*svcEntry{}
	}
	if old := c.m[key]; old != nil {
		c.size -= len(old.picks) + 1
		delete(c.m, key)
	}
	if c.size+cost > maxCachedRecords {
		clear(c.m)
		c.size = 0
	}
	c.m[key] = e
	c.size += cost
}
