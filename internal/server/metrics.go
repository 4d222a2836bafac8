package server

import (
	"context"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the server's Prometheus metrics, on its own registry. No
// label carries an ID: cardinality stays fixed however many agents exist.
type metrics struct {
	reg            *prometheus.Registry
	svids          *prometheus.CounterVec // kind: node, workload, jwt, server, admin
	attestFailures *prometheus.CounterVec // reason
	attestations   prometheus.Counter
	tokensCreated  prometheus.Counter
	entries        prometheus.Gauge
	nodes          prometheus.Gauge
	connected      prometheus.Gauge
	watchUpdates   *prometheus.CounterVec // type: update, heartbeat
	watchStarts    *prometheus.CounterVec // kind: snapshot, resumed
	adminRequests  *prometheus.CounterVec // outcome
	agentRequests  *prometheus.CounterVec // endpoint, outcome
	reportEvents   *prometheus.CounterVec // outcome: recorded, rate_limited, error
	tlsFailures    prometheus.Counter
	signSeconds    prometheus.Histogram
	bundleSeq      prometheus.GaugeFunc
	version        prometheus.GaugeFunc
	feedConnected  prometheus.GaugeFunc
	feedEvents     *prometheus.CounterVec // event: notification, reconnect, poll_catch_up

	s *Server
}

func newMetrics(s *Server) *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), s: s}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.svids = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_svids_issued_total",
		Help: "Certificates and tokens issued, by kind (node, workload, jwt, server, admin)."}, []string{"kind"})
	m.attestFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_attestation_failures_total",
		Help: "Node attestations refused, by reason."}, []string{"reason"})
	m.attestations = prometheus.NewCounter(prometheus.CounterOpts{Name: "moatless_attestations_total",
		Help: "Node attestations that succeeded."})
	m.tokensCreated = prometheus.NewCounter(prometheus.CounterOpts{Name: "moatless_join_tokens_created_total",
		Help: "Join tokens created."})
	m.entries = prometheus.NewGauge(prometheus.GaugeOpts{Name: "moatless_registration_entries",
		Help: "Registration entries in the store."})
	m.nodes = prometheus.NewGauge(prometheus.GaugeOpts{Name: "moatless_attested_nodes",
		Help: "Attested nodes in the store."})
	m.connected = prometheus.NewGauge(prometheus.GaugeOpts{Name: "moatless_connected_nodes",
		Help: "Watch streams open on this server."})
	m.watchUpdates = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_watch_updates_sent_total",
		Help: "Messages sent on watch streams, by type (update, heartbeat)."}, []string{"type"})
	m.watchStarts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_watch_streams_started_total",
		Help: "Watch streams opened, by how the first update was built: snapshot (every section) or resumed (only what changed after the client's ?since)."}, []string{"kind"})
	m.adminRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_admin_requests_total",
		Help: "Admin API requests, by outcome (success, client_error, denied, server_error)."}, []string{"outcome"})
	m.agentRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_agent_requests_total",
		Help: "Agent API requests, by endpoint and outcome."}, []string{"endpoint", "outcome"})
	m.reportEvents = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_audit_report_events_total",
		Help: "Decision events reported by sidecars and gateways, by outcome (recorded, rate_limited, error)."}, []string{"outcome"})
	m.tlsFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "moatless_client_certificate_failures_total",
		Help: "TLS handshakes refused because the client certificate was not a valid X509-SVID."})
	m.signSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "moatless_x509_sign_request_duration_seconds",
		Help:    "Time to serve an X509-SVID signing request, including audit.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)})
	m.bundleSeq = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "moatless_trust_bundle_sequence",
		Help: "Sequence number of the trust bundle served."}, func() float64 { return float64(s.bundleSeq.Load()) })
	m.version = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "moatless_change_version",
		Help: "Global change version this server has seen."}, func() float64 { return float64(s.hub.current()) })
	m.feedConnected = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "moatless_change_feed_connected",
		Help: "1 while this server listens for other replicas' changes (PostgreSQL LISTEN/NOTIFY), else 0 (it polls)."},
		func() float64 {
			if s.listening.Load() {
				return 1
			}
			return 0
		})
	m.feedEvents = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_change_feed_events_total",
		Help: "Change feed events: notification (heard a change), reconnect (the LISTEN connection was re-established), poll_catch_up (a poll found a change no notification announced)."},
		[]string{"event"})
	for _, c := range []prometheus.Collector{m.svids, m.attestFailures, m.attestations, m.tokensCreated, m.entries,
		m.nodes, m.connected, m.watchUpdates, m.watchStarts, m.adminRequests, m.agentRequests, m.reportEvents, m.tlsFailures, m.signSeconds,
		m.bundleSeq, m.version, m.feedConnected, m.feedEvents,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	return m
}

// refreshCounts sets the gauges that mirror store counts.
func (m *metrics) refreshCounts(ctx context.Context) error {
	n, err := m.s.db.CountEntries(ctx)
	if err != nil {
		return err
	}
	m.entries.Set(float64(n))
	nodes, err := m.s.db.CountNodes(ctx)
	if err != nil {
		return err
	}
	m.nodes.Set(float64(nodes))
	return nil
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
