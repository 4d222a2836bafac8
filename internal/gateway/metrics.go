package gateway

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus series. Labels are bounded: route
// names and upstream addresses come from the config, reasons from the
// constants in handler.go, status as its class.
type metrics struct {
	requests          *prometheus.CounterVec
	duration          *prometheus.HistogramVec
	connections       prometheus.Counter
	connsRefused      *prometheus.CounterVec
	handshakeFailures prometheus.Counter
	retries           *prometheus.CounterVec
	upstreamHealthy   *prometheus.GaugeVec
	upstreamErrors    *prometheus.CounterVec
	reloadFailures    *prometheus.CounterVec
	configReloads     prometheus.Counter
	policyVersion     prometheus.Gauge
	storeErrors       *prometheus.CounterVec
	wafMatches        *prometheus.CounterVec
	certReloadFailing prometheus.Gauge
	certNotAfter      prometheus.GaugeFunc
}

// newMetrics registers the gateway's series on reg; certNotAfter reports
// the expiry of the public certificate in force.
func newMetrics(reg prometheus.Registerer, certNotAfter func() time.Time) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_gateway_requests_total",
			Help: "Requests by route (empty when none matched), status class and block reason (empty when forwarded).",
		}, []string{"route", "code", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "moatless_gateway_request_duration_seconds",
			Help:    "Time from request head to the end of the answer, by route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
		connections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moatless_gateway_connections_total",
			Help: "Accepted client connections.",
		}),
		connsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_gateway_connections_refused_total",
			Help: "Client connections closed on accept, by cap (max_conns, max_conns_per_ip).",
		}, []string{"reason"}),
		handshakeFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moatless_gateway_tls_handshake_failures_total",
			Help: "Client TLS handshakes that failed or timed out.",
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_gateway_upstream_retries_total",
			Help: "Requests sent again to another upstream after a connection failure, by route.",
		}, []string{"route"}),
		upstreamHealthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "moatless_gateway_upstream_healthy",
			Help: "1 when the upstream passed its last health check (or has none), by route and upstream address.",
		}, []string{"route", "upstream"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_gateway_upstream_errors_total",
			Help: "Requests that could not be forwarded, by route and kind (connect, identity, timeout, other).",
		}, []string{"route", "kind"}),
		reloadFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_gateway_reload_failures_total",
			Help: "Refused reloads of config, tls, identity, policy or revocations; what was in force stays.",
		}, []string{"what"}),
		configReloads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moatless_gateway_config_reloads_total",
			Help: "Configurations put in force by a reload.",
		}),
		policyVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "moatless_gateway_policy_version",
			Help: "Policy version in force.",
		}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_gateway_ratelimit_store_errors_total",
			Help: "Rate-limit checks the store (Redis) could not answer, by limit and what was done (allow, deny).",
		}, []string{"limit", "action"}),
		wafMatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_gateway_waf_requests_total",
			Help: "Requests the WAF inspected, by route and outcome (pass, detect, block).",
		}, []string{"route", "outcome"}),
		certReloadFailing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "moatless_gateway_tls_certificate_reload_failing",
			Help: "1 while the TLS certificate files do not load (the last good certificate is served), 0 otherwise.",
		}),
		certNotAfter: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "moatless_gateway_tls_certificate_expiry_timestamp_seconds",
			Help: "Expiry (Unix seconds) of the public TLS certificate being served.",
		}, func() float64 {
			if t := certNotAfter(); !t.IsZero() {
				return float64(t.Unix())
			}
			return 0
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.connections, m.connsRefused, m.handshakeFailures, m.retries, m.upstreamHealthy, m.upstreamErrors, m.reloadFailures, m.configReloads, m.policyVersion, m.storeErrors, m.wafMatches, m.certReloadFailing, m.certNotAfter} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
