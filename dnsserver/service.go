package dnsserver

import (
	"cmp"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/fsm"
)

// candidate is a passing instance that matches a query, as visited. Its
// strings point into the registry's instance, which is fine: strings are
// immutable.
type candidate struct {
	addr   string // "" uses the node's address
	node   string
	port   uint16
	weight uint16
}

// pick is one record of a service answer: an instance resolved to its SRV
// target and address.
type pick struct {
	t      target
	ttl    uint32 // of the target's address record
	port   uint16
	weight uint16  // 1-65535
	tid    int32   // the same for picks of the same target, below the list's length
	idx    int32   // position among the matches of its query
	off    int     // where packService packed the SRV target, -1 when it did not
	id     uint64  // hash of target and port, which the choice of subsets draws from
	key    float64 // sort key of shuffle and askerOrder: earliest first
}

// visit is the VisitService callback: it collects the matching passing
// instances.
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
	w := uint16(min(max(in.EffectiveWeight(), 1), fsm.MaxWeight))
	sc.cands = append(sc.cands, candidate{addr: in.Address, node: in.Node, port: uint16(in.Port), weight: w})
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
	// equivalent mutant: a '_' label reaches here only through underscoreLabel, which wants 2+ bytes, so len > 1 and len >= 1 agree.
	if l0, l1 := label(0), label(1); n == 3 && len(l0) > 1 && l0[0] == '_' && len(l1) > 1 && l1[0] == '_' {
		// RFC 2782: _<svc>._<proto>. A protocol other than tcp or udp is
		// a tag, as in Consul.
		key.name = l0[1:]
		if proto := l1[1:]; proto != "tcp" && proto != "udp" {
			sc.tags = append(sc.tags, proto)
			// The tag as the filter reads it: "_web._primary" asks what
			// "primary.web" asks, and not what "_primary.web" (the tag
			// "_primary") asks.
			key.tags = proto
		}
	} else {
		key.name = label(n - 2)
		for i := 0; i < n-2; i++ {
			sc.tags = append(sc.tags, label(i))
		}
		if n > 2 {
			// equivalent mutant: key is only the answer cache's key; off by one here, the two spellings of a tagged query keep two entries with the same answers
			key.tags = rel[:sc.labels[n-2][0]-1]
		}
	}
	switch q.Qtype {
	case dns.TypeA:
		key.family = 4
	case dns.TypeAAAA:
		key.family = 6
	}

	if !s.mayReadService(sc.authz, key.name) {
		s.nxdomain(m)
		return
	}
	exists, all, e := s.matches(sc, key)
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
	weighted := e != nil && e.weighted || e == nil && anyWeighted(all)
	room := s.answerRoom(sc, q)
	// equivalent mutant: with exactly MaxRecords matches that fit, the subset path keeps them all and shuffles them alike.
	if len(all) <= s.cfg.MaxRecords && fit(all, q.Qtype, room) == len(all) {
		// Every match goes in: all of them, in an order drawn anew for
		// each answer.
		sc.picks = append(sc.picks[:0], all...)
		sc.shuffle(weighted)
		if b := s.packService(sc, q, false); b != nil {
			sc.packed = b
			return
		}
		s.nodata(m)
		return
	}
	// The answer holds only some of the matches, cut to MaxRecords or to
	// what fits a datagram. Clients such as HAProxy use a partial answer
	// as it is: drawn anew for each query, it would change every time
	// and they would take servers out and in without end. So the subset
	// is the same for the same asker while the matches are (only its
	// order changes), and depends on this server's seed too, so that the
	// askers of different agents spread over every instance.
	s.askerOrder(sc, all, e)
	k := fit(sc.picks, q.Qtype, room)
	cut := k < len(sc.picks)
	sc.picks = sc.picks[:k]
	sc.shuffle(weighted)
	if b := s.packService(sc, q, cut); b != nil {
		sc.packed = b
		return
	}
	s.nodata(m)
}

// answerRoom is how many bytes the answer section of a service answer may
// take: the datagram's size less the header, the question and the OPT
// record; unbounded over TCP.
func (s *Server) answerRoom(sc *scratch, q *dns.Question) int {
	if sc.udpSize == 0 {
		return math.MaxInt
	}
	room := sc.udpSize - headerLen - (len(q.Name) + 1) - 4
	if sc.hasOpt {
		room -= optLen
	}
	return room
}

// fit returns how many of the first picks have records that fit in room
// bytes, as packService packs them.
func fit(picks []pick, qtype uint16, room int) int {
	for i := range picks {
		switch qtype {
		case dns.TypeSRV:
			// Pointer to the owner, type, class, TTL, RDLENGTH;
			// priority, weight, port; the target whole.
			room -= 2 + 10 + 6 + len(picks[i].t.wire)
		case dns.TypeA:
			room -= 2 + 10 + 4
		default:
			room -= 2 + 10 + 16
		}
		if room < 0 {
			return i
		}
	}
	return len(picks)
}

// anyWeighted reports whether the weights of picks differ from 1.
func anyWeighted(picks []pick) bool {
	for i := range picks {
		if picks[i].weight != 1 {
			return true
		}
	}
	return false
}

// shuffle puts sc.picks in a random order: uniform when every weight is 1,
// else one in which each pick comes first with a probability proportional
// to its weight, and so on down the list (each pick draws an exponential
// time of rate weight, and the earliest comes first: Efraimidis and
// Spirakis' weighted sampling), so that clients that take the first
// address spread their load by weight.
func (sc *scratch) shuffle(weighted bool) {
	picks := sc.picks
	if !weighted {
		// equivalent mutant: at i == 0, j is 0 and the pick swaps with itself.
		for i := len(picks) - 1; i > 0; i-- {
			j := rand.IntN(i + 1)
			picks[i], picks[j] = picks[j], picks[i]
		}
		return
	}
	for i := range picks {
		picks[i].key = rand.ExpFloat64() / float64(picks[i].weight)
	}
	slices.SortFunc(picks, byKey)
}

func byKey(a, b pick) int { return cmp.Compare(a.key, b.key) }

// askerOrder puts into sc.picks the first MaxRecords of all in the order of
// this asker: each pick draws its exponential time of rate weight (as
// shuffle does) from a hash of this server's seed, the asker's address and
// the pick itself instead of at random. The same asker gets the same
// order, a pick keeps its place relative to the others when others come or
// go (rendezvous hashing), and heavier picks come first more often. Orders
// are kept with the cache entry e, when there is one.
func (s *Server) askerOrder(sc *scratch, all []pick, e *svcEntry) {
	asker := s.askerKey(sc.w)
	if e != nil {
		if order := e.order(asker); order != nil {
			sc.picks = sc.picks[:0]
			for _, i := range order {
				sc.picks = append(sc.picks, all[i])
			}
			return
		}
	}
	sc.picks = append(sc.picks[:0], all...)
	for i := range sc.picks {
		p := &sc.picks[i]
		// 53 random bits, as a float in (0, 1).
		// equivalent mutant: the 0.5 only keeps u off 0; -0.5 moves u by 2^-53, which reorders keys only within ~2^-50 of each other.
		u := (float64(mix(asker^p.id)>>11) + 0.5) / (1 << 53)
		p.key = -math.Log(u) / float64(p.weight)
	}
	slices.SortFunc(sc.picks, byKey)
	sc.picks = sc.picks[:min(len(sc.picks), s.cfg.MaxRecords)]
	if e != nil {
		e.keepOrder(asker, sc.picks)
	}
}

// askerKey hashes this server's seed and the address of the asker (not its
// port: resolvers draw a port per query).
func (s *Server) askerKey(w dns.ResponseWriter) uint64 {
	var ip net.IP
	if w != nil {
		switch a := w.RemoteAddr().(type) {
		case *net.UDPAddr:
			ip = a.IP
		case *net.TCPAddr:
			ip = a.IP
		}
	}
	addr, _ := netip.AddrFromSlice(ip)
	b := addr.Unmap().As16()
	// equivalent mutant: any fixed mix of seed and address keys askers alike (stable per asker and agent); the exact hash is no contract.
	return mix(s.seed^binary.BigEndian.Uint64(b[:8])) ^ mix(binary.BigEndian.Uint64(b[8:])+s.seed)
}

// mix is splitmix64's finalizer: every bit of x moves about half the bits
// of the result.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// pickID hashes an SRV target and port (FNV-1a), the identity of a record.
func pickID(name string, port uint16) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= 1099511628211
	}
	return mix(h ^ uint64(port))
}

// matches returns whether a service exists and the records of its passing
// instances that match key, and the cache entry they come from: nil when
// the registry cannot tell when it changes, and the records are read now.
func (s *Server) matches(sc *scratch, key svcKey) (bool, []pick, *svcEntry) {
	sc.family = key.family
	if s.watcher == nil {
		exists := s.reg.VisitService(key.name, sc.visitFn)
		sc.all = usable(s.resolve(sc.all[:0], sc.cands), key.family)
		return exists, sc.all, nil
	}
	if e := s.services.get(key); e != nil {
		return e.exists, e.picks, e
	}
	// Watch before reading, so that a change during the read makes the
	// entry stale at once.
	valid := s.watcher.Watch()
	exists := s.reg.VisitService(key.name, sc.visitFn)
	picks := usable(s.resolve(make([]pick, 0, len(sc.cands)), sc.cands), key.family)
	for i := range picks {
		picks[i].idx = int32(i)
	}
	clear(sc.cands) // drop the registry's strings from the pool
	e := &svcEntry{valid: valid, exists: exists, picks: picks, weighted: anyWeighted(picks)}
	s.services.put(key, e)
	return exists, picks, e
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

// firstExtra reports whether the target of a pick is seen for the first
// time in the answer being packed, so that the additional section lists
// each target once.
func (sc *scratch) firstExtra(p *pick) bool {
	if int(p.tid) >= len(sc.seen) {
		// equivalent mutant: growing seen past tid only spends memory.
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
	// equivalent mutant: counting generations down gives each answer a fresh mark too.
	sc.gen++
	// equivalent mutant: clearing the marks at every answer, not only on wrap, costs time only.
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
		// equivalent mutant: packService sets off of every pick before reading it.
		p := pick{port: cands[i].port, weight: cands[i].weight, off: -1}
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
			// equivalent mutant: packService sets off of every pick before reading it.
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
		dst[i].id = pickID(dst[i].t.name, dst[i].port)
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
	valid    <-chan struct{}
	exists   bool
	picks    []pick // every match; shared, never modified
	weighted bool   // some pick has a weight other than 1

	// orders keeps askerOrder's answer for each asker: the positions in
	// picks of the first MaxRecords.
	mu     sync.RWMutex
	orders map[uint64][]int32
}

// maxOrders bounds the askers whose order an entry keeps: a host's own
// resolvers and applications are a few; past that, orders are computed
// for each query.
const maxOrders = 256

func (e *svcEntry) order(asker uint64) []int32 {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.orders[asker]
}

func (e *svcEntry) keepOrder(asker uint64, picks []pick) {
	e.mu.Lock()
	defer e.mu.Unlock()
	// equivalent mutant: an order not kept is computed again, the same; keeping orders saves time only.
	if len(e.orders) >= maxOrders {
		return
	}
	if e.orders == nil {
		e.orders = map[uint64][]int32{}
	}
	order := make([]int32, len(picks))
	for i := range picks {
		order[i] = picks[i].idx
	}
	e.orders[asker] = order
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
	// equivalent mutant: the cost counts toward a memory bound only: answers are the same cached or not.
	cost := len(e.picks) + 1
	// equivalent mutant: the cost counts toward a memory bound only: answers are the same cached or not.
	if cost > maxCachedRecords {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[svcKey]*svcEntry{}
	}
	if old := c.m[key]; old != nil {
		// equivalent mutant: the size counts toward a memory bound only: answers are the same cached or not.
		c.size -= len(old.picks) + 1
		delete(c.m, key)
	}
	// equivalent mutant: where the memory bound falls (>=, size-cost) changes when the cache starts over, not an answer.
	if c.size+cost > maxCachedRecords {
		clear(c.m)
		c.size = 0
	}
	c.m[key] = e
	c.size += cost
}
