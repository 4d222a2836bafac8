package agent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the agent's Prometheus metrics: moatless_ prefix, base
// units, no SPIFFE IDs as labels (unbounded cardinality).
type metrics struct {
	served         *prometheus.CounterVec
	attestFailures *prometheus.CounterVec
	reconnects     prometheus.Counter
	bundleRefused  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, a *Agent) *metrics {
	m := &metrics{
		served: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_agent_svids_served_total",
			Help: "SVIDs handed to workloads over the Workload API, by kind (x509, jwt).",
		}, []string{"kind"}),
		attestFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_agent_attestation_failures_total",
			Help: "Failed attestations: of this node to the server (node) or of a caller of the Workload API (workload).",
		}, []string{"kind"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moatless_agent_watch_reconnects_total",
			Help: "Attempts to re-establish the watch stream to the server after it broke.",
		}),
		bundleRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_agent_bundle_refused_total",
			Help: "Trust bundles from the server refused because they were not newer than the one held, by reason: older (a lower sequence number, from a lagging replica) or forked (the same sequence number with other authorities).",
		}, []string{"reason"}),
	}
	for _, k := range []string{"older", "forked"} {
		m.bundleRefused.WithLabelValues(k)
	}
	for _, k := range []string{"x509", "jwt"} {
		m.served.WithLabelValues(k)
	}
	for _, k := range []string{"node", "workload"} {
		m.attestFailures.WithLabelValues(k)
	}
	reg.MustRegister(m.served, m.attestFailures, m.reconnects, m.bundleRefused, expiryCollector{a})
	return m
}

var (
	svidExpiryDesc = prometheus.NewDesc("moatless_agent_svid_expiry_seconds",
		"Seconds until the earliest workload X509-SVID the agent serves expires (absent when it serves none).", nil, nil)
	nodeExpiryDesc = prometheus.NewDesc("moatless_agent_node_svid_expiry_seconds",
		"Seconds until the agent's own SVID expires (absent before attestation).", nil, nil)
	connectedDesc = prometheus.NewDesc("moatless_agent_server_connected",
		"1 while the watch stream to the server is up, else 0.", nil, nil)
	cachedDesc = prometheus.NewDesc("moatless_agent_cached_svids",
		"Workload X509-SVIDs currently held for serving.", nil, nil)
	bundleSeqDesc = prometheus.NewDesc("moatless_agent_bundle_sequence",
		"Sequence number of the trust bundle the agent holds (absent before it has one); compare with the server's to see a change propagate.", nil, nil)
)

// expiryCollector computes the time-dependent gauges at scrape time.
type expiryCollector struct{ a *Agent }

func (expiryCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- svidExpiryDesc
	ch <- nodeExpiryDesc
	ch <- connectedDesc
	ch <- cachedDesc
	ch <- bundleSeqDesc
}

func (c expiryCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.a.now()
	if t := c.a.cache.EarliestExpiry(); !t.IsZero() {
		ch <- prometheus.MustNewConstMetric(svidExpiryDesc, prometheus.GaugeValue, t.Sub(now).Seconds())
	}
	if s := c.a.node.SVID(); s != nil {
		ch <- prometheus.MustNewConstMetric(nodeExpiryDesc, prometheus.GaugeValue, s.Certificates[0].NotAfter.Sub(now).Seconds())
	}
	v := 0.0
	if c.a.node.Connected() {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(connectedDesc, prometheus.GaugeValue, v)
	ch <- prometheus.MustNewConstMetric(cachedDesc, prometheus.GaugeValue, float64(c.a.cache.Served()))
	if b := c.a.node.Bundle(); b != nil {
		ch <- prometheus.MustNewConstMetric(bundleSeqDesc, prometheus.GaugeValue, float64(b.SequenceNumber))
	}
}
