package healthcheck

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/fsm"
)

var (
	statuses   = []string{fsm.StatusPassing, fsm.StatusWarning, fsm.StatusCritical}
	checkTypes = []string{typeHTTP, typeTCP, typeExec, typeTTL}
)

type metrics struct {
	checks   *prometheus.GaugeVec
	duration *prometheus.HistogramVec
	// byStatus and byType cache the children, so that counting a run or a
	// change allocates nothing.
	byStatus map[string]prometheus.Gauge
	byType   map[string]prometheus.Observer
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		checks: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sidecar_checks",
			Help: "Health checks this sidecar runs, by status.",
		}, []string{"status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sidecar_check_duration_seconds",
			Help: "Time one run of an http, tcp or exec health check took, by type.",
			// 250µs to 30s: a loopback HTTP or TCP check takes a few
			// hundred microseconds, a script milliseconds, a hung target
			// its timeout (5s by default, longer when configured).
			Buckets: []float64{
				0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
				0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
			},
		}, []string{"type"}),
		byStatus: make(map[string]prometheus.Gauge, len(statuses)),
		byType:   make(map[string]prometheus.Observer, len(checkTypes)),
	}
	for _, s := range statuses {
		m.byStatus[s] = m.checks.WithLabelValues(s)
	}
	for _, t := range checkTypes {
		m.byType[t] = m.duration.WithLabelValues(t)
	}
	for _, c := range []prometheus.Collector{m.checks, m.duration} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("healthcheck: metrics already registered on this registerer: %w", err)
			}
			return nil, fmt.Errorf("healthcheck: register metrics: %w", err)
		}
	}
	return m, nil
}
