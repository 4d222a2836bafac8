package detect

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/wire"
)

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
	MinSeverity Severity `json:"min_severity,omitempty"`
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
	FormatMoatless     = "moatless"
	FormatAlertmanager = "alertmanager"
)

func (a AlertSettings) validate(field string) error {
	switch a.MinSeverity {
	case "", Low, Medium, High, Critical:
	default:
		return fmt.Errorf("%s.min_severity %q: want low, medium, high or critical", field, a.MinSeverity)
	}
	names := map[string]bool{}
	for i, w := range a.Webhooks {
		f := fmt.Sprintf("%s.webhooks[%d]", field, i)
		if !nameRE().MatchString(w.Name) {
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
		case "", FormatMoatless:
			if w.SecretFile == "" {
				return fmt.Errorf("%s.secret_file: required: receivers verify the signature", f)
			}
		case FormatAlertmanager:
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

// Alert is the body of the moatless webhook format: one finding or one
// incident.
type Alert struct {
	// ID identifies this alert; a retried delivery carries the same ID,
	// so receivers can drop duplicates.
	ID       string    `json:"id"`
	Type     string    `json:"type"` // finding, incident
	SentAt   time.Time `json:"sent_at"`
	Finding  *Finding  `json:"finding,omitempty"`
	Incident *Incident `json:"incident,omitempty"`
}

// Sign returns the X-Moatless-Signature value of body at t: the
// HMAC-SHA256 with secret of "UNIX.BODY", hex.
func Sign(secret, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte("."))
	m.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

// VerifySignature checks an X-Moatless-Signature header against body:
// the HMAC must match (compared in constant time) and its time be within
// tolerance of now, so a captured delivery cannot be replayed later.
func VerifySignature(secret, body []byte, header string, now time.Time, tolerance time.Duration) error {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return errors.New("detect: signature header: want t=UNIX,v1=HEX")
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return errors.New("detect: signature header: v1 is not hex")
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte("."))
	m.Write(body)
	if !hmac.Equal(got, m.Sum(nil)) {
		return errors.New("detect: signature does not match")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("detect: signature made %s from now: outside the %s tolerance", d.Round(time.Second), tolerance)
	}
	return nil
}

// amAlert is one alert of Alertmanager's v2 API.
type amAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt,omitzero"`
	GeneratorURL string            `json:"generatorURL,omitempty"`
}

// AlertmanagerBody is the Alertmanager v2 body of an alert: a finding
// fires until its finding would close (last seen + suppressFor); an
// incident fires until released.
func AlertmanagerBody(a *Alert, suppressFor time.Duration) ([]byte, error) {
	var am amAlert
	switch {
	case a.Finding != nil:
		f := a.Finding
		am = amAlert{
			Labels:      map[string]string{"alertname": "MoatlessFinding", "severity": string(f.Severity), "detector": f.Detector, "identity": f.Identity},
			Annotations: map[string]string{"summary": f.Summary, "finding_id": f.ID, "count": strconv.Itoa(f.Count)},
			StartsAt:    f.Time.UTC(), EndsAt: f.LastSeen.Add(suppressFor).UTC(),
		}
		if f.Destination != "" {
			am.Labels["destination"] = f.Destination
		}
	case a.Incident != nil:
		inc := a.Incident
		am = amAlert{
			Labels:      map[string]string{"alertname": "MoatlessIncident", "severity": "critical", "identity": inc.Identity, "state": inc.State},
			Annotations: map[string]string{"summary": "incident " + inc.ID + " for " + inc.Identity + ": " + inc.Trigger, "incident_id": inc.ID},
			StartsAt:    inc.OpenedAt.UTC(),
		}
		if inc.Playbook != "" {
			am.Labels["playbook"] = inc.Playbook
		}
		if !inc.ReleasedAt.IsZero() {
			am.EndsAt = inc.ReleasedAt.UTC()
		}
	default:
		return nil, errors.New("detect: empty alert")
	}
	return json.Marshal([]amAlert{am})
}
