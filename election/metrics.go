package election

import (
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

type serverMetrics struct {
	reg              prometheus.Registerer
	collectors       []prometheus.Collector
	applyDuration    prometheus.Histogram
	leaseExpirations prometheus.Counter
	// sessionExpirations counts the node sessions among them: a node that
	// stopped keeping its own lease alive, whose holds were handed on.
	sessionExpirations prometheus.Counter
	streamSnapshots    prometheus.Counter
	diskFullRefusals   prometheus.Counter
	batchEntries       prometheus.Histogram
	commitNudges       prometheus.Counter
}

func newServerMetrics(reg prometheus.Registerer, s *Server) *serverMetrics {
	m := &serverMetrics{
		reg: reg,
		applyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sidecar_raft_apply_duration_seconds",
			Help: "Time from proposing an entry to its apply on this leader.",
			// From an in-memory commit (tens of µs) to a slow fsync.
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		leaseExpirations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecar_lease_expirations_total",
			Help: "Leases this server expired as Raft leader.",
		}),
		sessionExpirations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecar_node_session_expirations_total",
			Help: "Node sessions (a node's own lease) this server expired as Raft leader: that node stopped keeping it alive, and its locks and elections were handed on.",
		}),
		streamSnapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecar_stream_snapshots_encoded_total",
			Help: "Registry snapshots encoded for clients' change streams (shared by the streams that ask together).",
		}),
		batchEntries: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sidecar_rpc_apply_batch_entries",
			Help:    "Writes per batch this server received over RPC (from clients and from followers passing them on).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
		commitNudges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecar_raft_commit_nudges_total",
			Help: "Barriers this leader appended so that followers learn at once that a write committed (when no later write would tell them).",
		}),
		diskFullRefusals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecar_raft_disk_full_refusals_total",
			Help: "Writes this leader refused because its disk has no room for more of the Raft log.",
		}),
	}
	m.collectors = []prometheus.Collector{
		m.applyDuration,
		m.leaseExpirations,
		m.sessionExpirations,
		m.streamSnapshots,
		m.diskFullRefusals,
		m.batchEntries,
		m.commitNudges,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_raft_disk_full",
			Help: "1 while this server's disk has no room for more of the Raft log (writes are refused with 507).",
		}, func() float64 {
			if s.room != nil && s.room() != nil {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_raft_leader",
			Help: "1 while this server is the Raft leader.",
		}, func() float64 {
			if s.raft.State() == raft.Leader {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_raft_state",
			Help: "Raft state: 0 follower, 1 candidate, 2 leader, 3 shutdown.",
		}, func() float64 { return float64(s.raft.State()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_raft_commit_index",
			Help: "Raft commit index.",
		}, func() float64 { return float64(s.raft.CommitIndex()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_raft_applied_index",
			Help: "Index of the last entry applied to the registry.",
		}, func() float64 { return float64(s.raft.AppliedIndex()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_leases_active",
			Help: "Leases in the registry.",
		}, func() float64 { return float64(len(s.fsm.Leases())) }),
	}
	if reg != nil {
		for _, c := range m.collectors {
			reg.MustRegister(c)
		}
	}
	return m
}

func (m *serverMetrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}
