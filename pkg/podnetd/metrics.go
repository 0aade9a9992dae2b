package podnetd

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are podnetd's Prometheus metrics, on the registry given to New.
type metrics struct {
	syncDuration prometheus.Histogram
	syncErrors   prometheus.Counter
	changes      *prometheus.CounterVec
	remotes      prometheus.Gauge
	refused      prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "podnet_sync_duration_seconds",
			Help: "Time of a full sync of the cross-node dataplane and the masquerade table.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		syncErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "podnet_sync_errors_total",
			Help: "Syncs that failed (the next sync retries)."}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podnet_dataplane_changes_total",
			Help: "Kernel objects (routes, neighbours, FDB entries) added or removed by syncs."}, []string{"op"}),
		remotes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_remote_nodes",
			Help: "Other nodes the dataplane is programmed for."}),
		refused: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_remote_nodes_refused",
			Help: "Other nodes the backend cannot reach (e.g. host-gw to another segment)."}),
	}
	if reg != nil {
		reg.MustRegister(m.syncDuration, m.syncErrors, m.changes, m.remotes, m.refused)
	}
	return m
}
