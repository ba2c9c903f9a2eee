package discovery

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	reg        prometheus.Registerer
	members    *prometheus.GaugeVec
	events     *prometheus.CounterVec
	dropped    prometheus.Counter
	collectors []prometheus.Collector
}

func newMetrics(g *Gossip) *metrics {
	m := &metrics{
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sidecar_gossip_members",
			Help: "Members this node knows, by status (alive, suspect, failed, left), itself included.",
		}, []string{"status"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_gossip_events_total",
			Help: "Membership events, by type (join, leave, fail, update, reap, resync).",
		}, []string{"type"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecar_gossip_events_dropped_total",
			Help: "Membership events dropped because nobody read them (replaced by a resync event).",
		}),
	}
	for _, s := range []Status{StatusAlive, StatusSuspect, StatusFailed, StatusLeft} {
		m.members.WithLabelValues(string(s))
	}
	for t := EventJoin; t <= EventResync; t++ {
		m.events.WithLabelValues(t.String())
	}
	m.collectors = []prometheus.Collector{
		m.members, m.events, m.dropped,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_gossip_health_score",
			Help: "memberlist's awareness score of this node: 0 is healthy; higher means it is itself missing probe deadlines and slows its own probing.",
		}, func() float64 { return float64(g.ml.GetHealthScore()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_gossip_keys",
			Help: "Keys in this node's gossip keyring (0: gossip not encrypted); more than 1 for long means a key rotation was left unfinished.",
		}, func() float64 {
			if g.keyring == nil {
				return 0
			}
			return float64(len(g.keyring.ring.GetKeys())) // memberlist's lock only: a scrape never waits for a keyring write
		}),
	}
	return m
}

// register adds the collectors to reg (nil: none), all or nothing.
func (m *metrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for i, c := range m.collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range m.collectors[:i] {
				reg.Unregister(done)
			}
			return fmt.Errorf("discovery: register metrics: %w", err)
		}
	}
	m.reg = reg
	return nil
}

func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}
