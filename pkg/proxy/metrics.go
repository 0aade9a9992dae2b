package proxy

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the proxy's Prometheus metrics, on the registry in Config.
type metrics struct {
	duration         *prometheus.HistogramVec
	syncs            *prometheus.CounterVec
	chains           prometheus.Gauge
	rules            prometheus.Gauge
	ports            prometheus.Gauge
	conntrackDeleted prometheus.Counter
	conntrackErrors  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "podnet_proxy_sync_duration_seconds",
			Help:    "Time of a Service proxy sync, by mode (full: the whole table; partial: changed Service ports only).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"mode"}),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podnet_proxy_syncs_total",
			Help: "Service proxy syncs by mode and result (a failed partial sync is followed by a full one)."}, []string{"mode", "result"}),
		chains: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_proxy_chains",
			Help: "Chains in the proxy's nftables table after the last successful sync."}),
		rules: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_proxy_rules",
			Help: "Rules in the proxy's nftables table after the last successful sync."}),
		ports: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_proxy_service_ports",
			Help: "Service ports programmed by the last successful sync."}),
		conntrackDeleted: prometheus.NewCounter(prometheus.CounterOpts{Name: "podnet_proxy_conntrack_deleted_total",
			Help: "Stale UDP conntrack entries deleted (to removed endpoints, or never NATed)."}),
		conntrackErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "podnet_proxy_conntrack_errors_total",
			Help: "Conntrack cleanups that failed (the table itself was synced)."}),
	}
	if reg != nil {
		reg.MustRegister(m.duration, m.syncs, m.chains, m.rules, m.ports, m.conntrackDeleted, m.conntrackErrors)
	}
	return m
}

func (m *metrics) observe(mode string, err error, d time.Duration) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.duration.WithLabelValues(mode).Observe(d.Seconds())
	m.syncs.WithLabelValues(mode, result).Inc()
}

// size records the size of the table as written.
func (m *metrics) size(fam Family, n Node, ports map[ServicePortName]*portState) {
	chains := len(baseChains) + len(staticChains(fam, n, 0))
	rules := staticRuleCount(fam, n)
	for _, ps := range ports {
		chains += len(ps.objs.chains)
		rules += ps.objs.ruleCount()
	}
	m.chains.Set(float64(chains))
	m.rules.Set(float64(rules))
	m.ports.Set(float64(len(ports)))
}
