package detect

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestSignatures(t *testing.T) {
	secret := []byte("0123456789abcdef0123")
	body := []byte(`{"id":"finding-1"}`)
	now := time.Unix(1_800_000_000, 0)
	h := Sign(secret, body, now)
	if err := VerifySignature(secret, body, h, now.Add(time.Minute), 5*time.Minute); err != nil {
		t.Fatalf("valid signature refused: %v", err)
	}
	for _, tc := range []struct {
		name   string
		secret []byte
		body   []byte
		header string
		at     time.Time
	}{
		{"other_body", secret, []byte(`{"id":"finding-2"}`), h, now},
		{"other_secret", []byte("another secret of 20b"), body, h, now},
		{"replayed_later", secret, body, h, now.Add(10 * time.Minute)},
		{"from_the_future", secret, body, h, now.Add(-10 * time.Minute)},
		{"no_signature", secret, body, strings.Split(h, ",")[0], now},
		{"not_hex", secret, body, "t=1800000000,v1=zz", now},
		{"garbage", secret, body, "sha256=abc", now},
		{"time_swapped", secret, body, strings.Replace(h, "t=1800000000", "t=1800000001", 1), now},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := VerifySignature(tc.secret, tc.body, tc.header, tc.at, 5*time.Minute); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestAlertmanagerBody(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	f := &Finding{ID: "f1", Time: t0, LastSeen: t0.Add(time.Minute), Count: 3, Detector: DetectorExfiltration, Severity: High,
		Identity: "spiffe://td/ns/prod/sa/reports", Destination: "spiffe://td/ns/prod/sa/orders", Summary: "pulled 150 MiB"}
	b, err := AlertmanagerBody(&Alert{Finding: f}, 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var got []struct {
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
		StartsAt    time.Time         `json:"startsAt"`
		EndsAt      time.Time         `json:"endsAt"`
	}
	if err := json.Unmarshal(b, &got); err != nil || len(got) != 1 {
		t.Fatalf("%s: %v", b, err)
	}
	a := got[0]
	if a.Labels["alertname"] != "MoatlessFinding" || a.Labels["severity"] != "high" || a.Labels["identity"] != f.Identity ||
		a.Annotations["finding_id"] != "f1" || !a.StartsAt.Equal(t0) || !a.EndsAt.Equal(t0.Add(31*time.Minute)) {
		t.Fatalf("alert %+v", a)
	}
	inc := &Incident{ID: "i1", Identity: f.Identity, State: IncidentReleased, OpenedAt: t0, ReleasedAt: t0.Add(time.Hour), Playbook: "contain"}
	b, _ = AlertmanagerBody(&Alert{Incident: inc}, 0)
	json.Unmarshal(b, &got)
	if got[0].Labels["alertname"] != "MoatlessIncident" || !got[0].EndsAt.Equal(t0.Add(time.Hour)) || got[0].Labels["playbook"] != "contain" {
		t.Fatalf("incident alert %s", b)
	}
}
