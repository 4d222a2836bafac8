package token

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	issued   *prometheus.CounterVec
	failures *prometheus.CounterVec
	logins   *prometheus.CounterVec
	mfa      *prometheus.CounterVec
	revoked  prometheus.Counter
	keys     prometheus.Gauge
	duration *prometheus.HistogramVec
}

// grantLabels are the only values of the "grant" label.
var grantLabels = map[string]string{
	GrantClientCredentials: "client_credentials",
	GrantAuthorizationCode: "authorization_code",
	GrantRefreshToken:      "refresh_token",
	GrantTokenExchange:     "token_exchange",
}

func grantLabel(g string) string {
	if l, ok := grantLabels[g]; ok {
		return l
	}
	return "other"
}

// reasonLabels bounds the "reason" label to the OAuth error codes.
var reasonLabels = map[string]bool{
	errInvalidRequest: true, errInvalidClient: true, errInvalidGrant: true, errUnauthorizedClient: true,
	errUnsupportedGrantType: true, errInvalidScope: true, errInvalidTarget: true, errAccessDenied: true,
	errUnsupportedResponse: true, errUnsupportedTokenType: true, errServerError: true, errInvalidToken: true,
}

func reasonLabel(code string) string {
	if reasonLabels[code] {
		return code
	}
	return "other"
}

func newMetrics() *metrics {
	return &metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_oauth_tokens_issued_total",
			Help: "Access tokens issued by the token service, by grant type.",
		}, []string{"grant"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_oauth_token_failures_total",
			Help: "Token endpoint requests refused, by grant type and OAuth error code.",
		}, []string{"grant", "reason"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_oauth_logins_total",
			Help: "Login page attempts by result (success, bad_credentials, throttled, mfa_failed, busy, stale: the user's sessions were ended meanwhile).",
		}, []string{"result"}),
		mfa: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "moatless_oauth_mfa_events_total",
			Help: "TOTP and recovery code events (verified, failed, replayed, recovery_used, enrolled, reset).",
		}, []string{"event"}),
		revoked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "moatless_oauth_tokens_revoked_total",
			Help: "Access token IDs revoked (directly or with their refresh family).",
		}),
		keys: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "moatless_oauth_signing_keys",
			Help: "Signing keys published in the JWKS (signing, next and retired-but-valid).",
		}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "moatless_oauth_token_request_duration_seconds",
			Help:    "Token endpoint latency by grant type.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"grant"}),
	}
}

// Collectors returns the service's Prometheus collectors for the server
// to register.
func (s *Service) Collectors() []prometheus.Collector {
	m := s.metrics
	return []prometheus.Collector{m.issued, m.failures, m.logins, m.mfa, m.revoked, m.keys, m.duration}
}
