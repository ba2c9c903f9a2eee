package dnsserver

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// qtypes are the query types counted under their own label; every other
// type is counted as "other", so that the label set stays bounded whatever
// clients send.
var qtypes = []uint16{
	dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypeTXT, dns.TypeANY,
	dns.TypeSOA, dns.TypeNS, dns.TypePTR, dns.TypeCNAME, dns.TypeMX,
	dns.TypeHTTPS, dns.TypeSVCB,
}

// numRcodes counts the rcodes labelled by name (0-23 cover RFC 1035 to RFC
// 8914); greater ones are "other".
const numRcodes = 24

type metrics struct {
	queries *prometheus.CounterVec
	// refused counts names the DNS token may not read, by kind.
	refused  *prometheus.CounterVec
	duration prometheus.Histogram
	// counters caches the children of queries, indexed by qtype slot and
	// rcode, so that counting a query allocates nothing.
	counters [][numRcodes + 1]atomic.Pointer[counter]
	qslot    map[uint16]int
}

type counter struct{ c prometheus.Counter }

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_dns_queries_total",
			Help: "DNS queries answered, by query type and response code.",
		}, []string{"qtype", "rcode"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_dns_acl_denied_total",
			Help: "DNS names answered NXDOMAIN because the DNS token may not read them, by kind of name (service, node, election).",
		}, []string{"kind"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sidecar_dns_request_duration_seconds",
			Help: "Time from receiving a DNS query to writing its answer, forwarding included.",
			// 25µs to 10s: registry answers take tens of microseconds,
			// forwarded ones up to the recursor timeouts.
			Buckets: []float64{
				0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
				0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
				0.1, 0.25, 0.5, 1, 2.5, 5, 10,
			},
		}),
		counters: make([][numRcodes + 1]atomic.Pointer[counter], len(qtypes)+1),
		qslot:    make(map[uint16]int, len(qtypes)),
	}
	for i, t := range qtypes {
		m.qslot[t] = i
	}
	for _, k := range []string{deniedService, deniedNode, deniedElection} {
		m.refused.WithLabelValues(k) // exported at 0 before a refusal
	}
	for _, c := range []prometheus.Collector{m.queries, m.refused, m.duration} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("dnsserver: metrics already registered on this registerer: %w", err)
			}
			return nil, fmt.Errorf("dnsserver: register metrics: %w", err)
		}
	}
	return m, nil
}

// observe counts one answered query. The counter goes first: a reader that
// sees the duration observed sees the query counted.
func (m *metrics) observe(qtype uint16, rcode int, start time.Time) {
	elapsed := time.Since(start)
	qs, ok := m.qslot[qtype]
	if !ok {
		qs = len(qtypes)
	}
	rs := rcode
	// equivalent mutant: rcode 24 has no name: slot numRcodes and label "other" either way (> for >=).
	if rs < 0 || rs >= numRcodes {
		rs = numRcodes
	}
	p := &m.counters[qs][rs]
	c := p.Load()
	if c == nil {
		qname := "other"
		if qs < len(qtypes) {
			qname = dns.TypeToString[qtype]
		}
		rname, ok := dns.RcodeToString[rs]
		if !ok || rs == numRcodes {
			rname = "other"
		}
		c = &counter{m.queries.WithLabelValues(qname, rname)}
		p.Store(c)
	}
	c.c.Inc()
	m.duration.Observe(elapsed.Seconds())
}

// denied counts a name the DNS token may not read.
func (m *metrics) denied(kind string) {
	m.refused.WithLabelValues(kind).Inc()
}
