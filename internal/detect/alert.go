package detect

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

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
