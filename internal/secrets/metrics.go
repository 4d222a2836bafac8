package secrets

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of the secrets service. Labels carry engines, operations and
// outcomes, never paths, names or identities.
type metrics struct {
	requests       *prometheus.CounterVec   // engine, op, code
	seconds        *prometheus.HistogramVec // engine
	tokens         *prometheus.CounterVec   // method
	loginFailures  *prometheus.CounterVec   // method
	leasesIssued   prometheus.Counter
	leaseRevokes   *prometheus.CounterVec // outcome: success, failure
	leases         prometheus.Gauge
	leasesFailing  prometheus.Gauge
	unsealFailures prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_secrets_requests_total",
			Help: "Secrets API requests, by engine (first path segment), operation and HTTP status code."}, []string{"engine", "op", "code"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "moatless_secrets_request_duration_seconds",
			Help: "Secrets API request latency, by engine.", Buckets: prometheus.ExponentialBuckets(0.0002, 3, 10)}, []string{"engine"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_secrets_tokens_issued_total",
			Help: "Client tokens issued, by how the caller authenticated (spiffe, approle, jwt, token)."}, []string{"method"}),
		loginFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_secrets_login_failures_total",
			Help: "Refused logins, by method."}, []string{"method"}),
		leasesIssued: prometheus.NewCounter(prometheus.CounterOpts{Name: "moatless_secrets_leases_issued_total",
			Help: "Dynamic secret leases issued."}),
		leaseRevokes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_secrets_lease_revocations_total",
			Help: "Lease revocation attempts, by outcome (success, failure); failures are retried with backoff."}, []string{"outcome"}),
		leases: prometheus.NewGauge(prometheus.GaugeOpts{Name: "moatless_secrets_leases",
			Help: "Leases in the store (live, or awaiting revocation)."}),
		leasesFailing: prometheus.NewGauge(prometheus.GaugeOpts{Name: "moatless_secrets_leases_revocation_pending",
			Help: "Leases whose revocation has failed at least once and is being retried."}),
		unsealFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "moatless_secrets_unseal_failures_total",
			Help: "Unseal attempts with a key or passphrase that does not open the keyring."}),
	}
}

// Collectors returns the service's metrics for the server's registry.
func (s *Service) Collectors() []prometheus.Collector {
	m := s.metrics
	return []prometheus.Collector{m.requests, m.seconds, m.tokens, m.loginFailures, m.leasesIssued, m.leaseRevokes, m.leases, m.leasesFailing, m.unsealFailures}
}

func (m *metrics) observe(engine, op string, status int, d time.Duration) {
	switch engine {
	case "sys", "auth", "transit", "database", "fieldcrypt":
	default:
		engine = "kv" // mount names are user-chosen: bounded label set
	}
	if op == "" {
		op = "none"
	}
	m.requests.WithLabelValues(engine, op, strconv.Itoa(status)).Inc()
	m.seconds.WithLabelValues(engine).Observe(d.Seconds())
}

func (s *Service) refreshLeaseGauge(ctx context.Context) {
	var n, failing int64
	q := s.db.SQL()
	if q.QueryRowContext(ctx, "SELECT COUNT(*) FROM secrets_leases").Scan(&n) == nil {
		s.metrics.leases.Set(float64(n))
	}
	if q.QueryRowContext(ctx, "SELECT COUNT(*) FROM secrets_leases WHERE attempts > 0").Scan(&failing) == nil {
		s.metrics.leasesFailing.Set(float64(failing))
	}
}
