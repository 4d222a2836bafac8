package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/wire"
)

// DetectThresholds are the detectors' settings for the identities they judge.
// A zero field takes the default (see DefaultDetectThresholds).
type DetectThresholds struct {
	// RateFactor: a minute with more than RateFactor × the edge's
	// baseline requests is a rate finding (default 3), when it is also
	// above the baseline by 5 deviations and at least MinRate requests.
	RateFactor float64 `json:"rate_factor,omitempty"`
	MinRate    float64 `json:"min_rate,omitempty"` // default 30 requests per minute
	// DenyBurst: this many requests refused by policy from one identity
	// in a minute is probing (default 20). 401s (the token it relayed was
	// bad) and no_policy denials (the destination had no policy yet) are
	// not the caller's and do not count.
	DenyBurst int `json:"deny_burst,omitempty"`
	// NewPaths: this many paths the identity never called before, in 5
	// minutes, is probing (default 10).
	NewPaths int `json:"new_paths,omitempty"`
	// BytesPerMinute: responses of this many bytes on one edge in a
	// minute is exfiltration whatever the baseline (default 100 MB).
	BytesPerMinute int64 `json:"bytes_per_minute,omitempty"`
	// BytesFactor and MinBytes: more than BytesFactor × the edge's
	// baseline response bytes in a minute, and at least MinBytes, is
	// exfiltration too (defaults 10 and 10 MB).
	BytesFactor float64 `json:"bytes_factor,omitempty"`
	MinBytes    int64   `json:"min_bytes,omitempty"`
	// PIIMatches: this many personal data matches in the sampled
	// responses of one edge in a minute is exfiltration (default 20).
	PIIMatches int `json:"pii_matches,omitempty"`
	// ExchangeBurst: this many token exchanges by one client in a minute
	// is a token anomaly (default 60).
	ExchangeBurst int `json:"exchange_burst,omitempty"`
	// AttestFailures: this many failed attestations from one address in
	// 5 minutes is an attestation anomaly (default 5).
	AttestFailures int `json:"attest_failures,omitempty"`
}

// DefaultDetectThresholds are the detectors' defaults.
var DefaultDetectThresholds = DetectThresholds{
	RateFactor: 3, MinRate: 30, DenyBurst: 20, NewPaths: 10,
	BytesPerMinute: 100 << 20, BytesFactor: 10, MinBytes: 10 << 20, PIIMatches: 20,
	ExchangeBurst: 60, AttestFailures: 5,
}

// Or returns t with its zero fields taken from d.
func (t DetectThresholds) Or(d DetectThresholds) DetectThresholds {
	pick := func(a, b float64) float64 {
		if a == 0 {
			return b
		}
		return a
	}
	pickI := func(a, b int64) int64 {
		if a == 0 {
			return b
		}
		return a
	}
	return DetectThresholds{
		RateFactor: pick(t.RateFactor, d.RateFactor), MinRate: pick(t.MinRate, d.MinRate),
		DenyBurst: int(pickI(int64(t.DenyBurst), int64(d.DenyBurst))), NewPaths: int(pickI(int64(t.NewPaths), int64(d.NewPaths))),
		BytesPerMinute: pickI(t.BytesPerMinute, d.BytesPerMinute), BytesFactor: pick(t.BytesFactor, d.BytesFactor),
		MinBytes: pickI(t.MinBytes, d.MinBytes), PIIMatches: int(pickI(int64(t.PIIMatches), int64(d.PIIMatches))),
		ExchangeBurst:  int(pickI(int64(t.ExchangeBurst), int64(d.ExchangeBurst))),
		AttestFailures: int(pickI(int64(t.AttestFailures), int64(d.AttestFailures))),
	}
}

func (t DetectThresholds) validate(field string) error {
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"rate_factor", t.RateFactor}, {"min_rate", t.MinRate}, {"deny_burst", float64(t.DenyBurst)},
		{"new_paths", float64(t.NewPaths)}, {"bytes_per_minute", float64(t.BytesPerMinute)},
		{"bytes_factor", float64(t.BytesFactor)}, {"min_bytes", float64(t.MinBytes)},
		{"pii_matches", float64(t.PIIMatches)}, {"exchange_burst", float64(t.ExchangeBurst)},
		{"attest_failures", float64(t.AttestFailures)},
	} {
		if f.v < 0 {
			return fmt.Errorf("%s.%s: %v is negative", field, f.name, f.v)
		}
	}
	if t.RateFactor != 0 && t.RateFactor < 1 || t.BytesFactor != 0 && t.BytesFactor < 1 {
		return fmt.Errorf("%s: rate_factor and bytes_factor must be at least 1", field)
	}
	return nil
}

// ServiceThresholds overrides thresholds for the identities Match names:
// a SPIFFE ID, or a pattern where "*" stands for any run of characters
// ("spiffe://example.org/ns/batch/*").
type ServiceThresholds struct {
	Match string `json:"match"`
	DetectThresholds
}

// DetectSettings configure detection and response on the server (the
// detect section of the server config, read by internal/detect). They live
// here, not in detect, so that config, which every role links, does not
// link the detection engine. Every field has a working default.
type DetectSettings struct {
	// Disabled turns detection off (records are still stored).
	Disabled bool `json:"disabled,omitempty"`
	// Retention is how long traffic records and sampled decisions are
	// kept; default 14 days.
	Retention wire.Duration `json:"retention,omitempty"`
	// LearningPeriod is how long an identity's traffic is only learned
	// from before the new-edge detector judges it; default 24h.
	LearningPeriod wire.Duration `json:"learning_period,omitempty"`
	// SuppressFor is how long a finding stays open: the same detector
	// finding the same thing about the same identity and edge within it
	// counts on the open finding instead of raising a new one; default
	// 30m.
	SuppressFor wire.Duration `json:"suppress_for,omitempty"`
	// RiskWindow is how far back findings count towards an identity's
	// risk; default 1h.
	RiskWindow wire.Duration `json:"risk_window,omitempty"`
	// MaxFindingsPerMinute bounds the new findings each server replica
	// raises per minute; more are dropped and counted (default 100).
	MaxFindingsPerMinute int `json:"max_findings_per_minute,omitempty"`
	// Thresholds are the defaults for every identity; Services override
	// them for some (the first match wins).
	Thresholds DetectThresholds    `json:"thresholds,omitempty"`
	Services   []ServiceThresholds `json:"services,omitempty"`
	// Relays name the identities that forward other parties' requests
	// (the edge gateway): SPIFFE IDs or patterns, as Services' Match.
	// The requests a relay's upstreams refuse by policy are what its
	// clients asked for, so they count as an anomaly about the relay
	// (an incident opens and notifies), never as evidence that contains
	// it (see internal/detect: Finding.Relayed).
	Relays []string `json:"relays,omitempty"`
	// Alerts say where findings and incidents are sent.
	Alerts AlertSettings `json:"alerts,omitempty"`
}

// Defaults of DetectSettings.
const (
	DefaultDetectRetention            = 14 * 24 * time.Hour
	DefaultDetectLearningPeriod       = 24 * time.Hour
	DefaultDetectSuppressFor          = 30 * time.Minute
	DefaultDetectRiskWindow           = time.Hour
	DefaultDetectMaxFindingsPerMinute = 100
)

// Complete fills in defaults.
func (s *DetectSettings) Complete() {
	def := func(d *wire.Duration, v time.Duration) {
		if *d == 0 {
			*d = wire.Duration(v)
		}
	}
	def(&s.Retention, DefaultDetectRetention)
	def(&s.LearningPeriod, DefaultDetectLearningPeriod)
	def(&s.SuppressFor, DefaultDetectSuppressFor)
	def(&s.RiskWindow, DefaultDetectRiskWindow)
	if s.MaxFindingsPerMinute == 0 {
		s.MaxFindingsPerMinute = DefaultDetectMaxFindingsPerMinute
	}
	s.Thresholds = s.Thresholds.Or(DefaultDetectThresholds)
}

// Validate checks the settings; errors name the field under prefix
// ("detect").
func (s *DetectSettings) Validate(prefix string) error {
	var errs []error
	pos := func(name string, d wire.Duration, lo time.Duration) {
		if d != 0 && d.Std() < lo {
			errs = append(errs, fmt.Errorf("%s.%s: %s: at least %s", prefix, name, d.Std(), lo))
		}
	}
	pos("retention", s.Retention, time.Hour)
	pos("learning_period", s.LearningPeriod, 0)
	pos("suppress_for", s.SuppressFor, time.Minute)
	pos("risk_window", s.RiskWindow, time.Minute)
	if s.MaxFindingsPerMinute < 0 {
		errs = append(errs, fmt.Errorf("%s.max_findings_per_minute: negative", prefix))
	}
	if err := s.Thresholds.validate(prefix + ".thresholds"); err != nil {
		errs = append(errs, err)
	}
	for i, st := range s.Services {
		f := fmt.Sprintf("%s.services[%d]", prefix, i)
		if err := CheckIdentityPattern(st.Match); err != nil {
			errs = append(errs, fmt.Errorf("%s.match: %w", f, err))
		}
		if err := st.DetectThresholds.validate(f); err != nil {
			errs = append(errs, err)
		}
	}
	for i, p := range s.Relays {
		if err := CheckIdentityPattern(p); err != nil {
			errs = append(errs, fmt.Errorf("%s.relays[%d]: %w", prefix, i, err))
		}
	}
	if err := s.Alerts.validate(prefix + ".alerts"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// CheckIdentityPattern accepts a SPIFFE ID, or a pattern over them in which "*"
// stands for any run of characters, "/" included
// ("spiffe://example.org/ns/batch/*").
func CheckIdentityPattern(p string) error {
	if p == "" {
		return errors.New("required")
	}
	if len(p) > 2048 {
		return errors.New("longer than 2048 bytes")
	}
	if !strings.Contains(p, "*") {
		if _, err := spiffeid.FromString(p); err != nil {
			return fmt.Errorf("%q: not a SPIFFE ID: %w", p, err)
		}
		return nil
	}
	if !strings.HasPrefix(p, "spiffe://") {
		return fmt.Errorf("%q: a pattern starts with spiffe://", p)
	}
	return nil
}

// MatchIdentityPattern reports whether pattern names id: equal, or with each
// "*" in pattern standing for any run of characters.
func MatchIdentityPattern(pattern, id string) bool {
	if !strings.Contains(pattern, "*") {
		return pattern == id
	}
	parts := strings.Split(pattern, "*")
	if !strings.HasPrefix(id, parts[0]) {
		return false
	}
	rest := id[len(parts[0]):]
	for i, part := range parts[1:] {
		if i == len(parts)-2 {
			return strings.HasSuffix(rest, part)
		}
		j := strings.Index(rest, part)
		if j < 0 {
			return false
		}
		rest = rest[j+len(part):]
	}
	return true
}

// AlertSettings say where findings and incidents are sent, besides the
// server's log and metrics (always).
//
//	alerts:
//	  min_severity: medium
//	  webhooks:
//	  - {name: soc, url: "https://hooks.example.org/moatless", secret_file: /etc/moatless/webhook-secret}
//	  - {name: am, url: "https://alertmanager.example.org/api/v2/alerts", format: alertmanager}
type AlertSettings struct {
	// MinSeverity: findings below it are logged but not sent (default
	// medium). Incidents are always sent.
	MinSeverity string `json:"min_severity,omitempty"`
	// Webhooks receive every alert.
	Webhooks []Webhook `json:"webhooks,omitempty"`
}

// Webhook is one alert receiver.
type Webhook struct {
	// Name labels metrics and logs.
	Name string `json:"name"`
	// URL is https, or http to a loopback address only.
	URL string `json:"url"`
	// Format is "moatless" (default: the Alert JSON below, signed) or
	// "alertmanager" (Prometheus Alertmanager's POST /api/v2/alerts
	// body: a list of alerts with labels and annotations).
	Format string `json:"format,omitempty"`
	// SecretFile holds the HMAC-SHA256 key that signs each body
	// (X-Moatless-Signature: t=UNIX,v1=HEX over "UNIX.BODY"); mode 0600.
	// Required for the moatless format.
	SecretFile string `json:"secret_file,omitempty"`
	// CAFile holds extra PEM roots for the receiver's certificate.
	CAFile string `json:"ca_file,omitempty"`
	// Timeout bounds one attempt (default 5s); MaxAttempts the attempts of
	// one alert (default 6); RetryBackoff the first wait between them
	// (default 1s, doubling to at most 1m, with jitter).
	Timeout      wire.Duration `json:"timeout,omitempty"`
	MaxAttempts  int           `json:"max_attempts,omitempty"`
	RetryBackoff wire.Duration `json:"retry_backoff,omitempty"`
}

// Webhook formats.
const (
	WebhookFormatMoatless     = "moatless"
	WebhookFormatAlertmanager = "alertmanager"
)

func (a AlertSettings) validate(field string) error {
	switch a.MinSeverity {
	case "", "low", "medium", "high", "critical":
	default:
		return fmt.Errorf("%s.min_severity %q: want low, medium, high or critical", field, a.MinSeverity)
	}
	names := map[string]bool{}
	for i, w := range a.Webhooks {
		f := fmt.Sprintf("%s.webhooks[%d]", field, i)
		if !webhookName().MatchString(w.Name) {
			return fmt.Errorf("%s.name %q: lower-case letters, digits and '-'", f, w.Name)
		}
		if names[w.Name] {
			return fmt.Errorf("%s.name %q: used twice", f, w.Name)
		}
		names[w.Name] = true
		if err := checkWebhookURL(w.URL); err != nil {
			return fmt.Errorf("%s.url: %w", f, err)
		}
		switch w.Format {
		case "", WebhookFormatMoatless:
			if w.SecretFile == "" {
				return fmt.Errorf("%s.secret_file: required: receivers verify the signature", f)
			}
		case WebhookFormatAlertmanager:
		default:
			return fmt.Errorf("%s.format %q: want moatless or alertmanager", f, w.Format)
		}
		if w.Timeout < 0 || w.MaxAttempts < 0 || w.MaxAttempts > 20 || w.RetryBackoff < 0 {
			return fmt.Errorf("%s: timeout, retry_backoff must be positive, max_attempts 1 to 20", f)
		}
	}
	return nil
}

func checkWebhookURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q: %w", raw, err)
	}
	if u.User != nil || u.Fragment != "" || u.Host == "" {
		return fmt.Errorf("%q: want scheme://host[:port]/path, without credentials or fragment", raw)
	}
	switch u.Scheme {
	case "https":
	case "http":
		ip := net.ParseIP(u.Hostname())
		if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("%q: plain http only to a loopback address; use https", raw)
		}
	default:
		return fmt.Errorf("%q: want an https URL", raw)
	}
	return nil
}

// ThresholdsFor returns the thresholds in force for an identity: those of
// the first Services entry whose Match names it, their zero fields taken
// from Thresholds; Thresholds when none does.
func (s *DetectSettings) ThresholdsFor(id string) DetectThresholds {
	for _, st := range s.Services {
		if MatchIdentityPattern(st.Match, id) {
			return st.DetectThresholds.Or(s.Thresholds)
		}
	}
	return s.Thresholds
}

// IsRelay reports whether one of Relays names id.
func (s *DetectSettings) IsRelay(id string) bool {
	for _, p := range s.Relays {
		if MatchIdentityPattern(p, id) {
			return true
		}
	}
	return false
}

// webhookName is what names a webhook in metrics and logs; compiled on
// first use (its bounded repetition is tens of KB every role would keep).
var webhookName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`) })
