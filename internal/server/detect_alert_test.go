package server_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// receiver is a webhook on loopback that fails the first failures
// deliveries with 503, then takes them.
type receiver struct {
	mu       sync.Mutex
	failures int
	got      []*http.Request
	bodies   [][]byte
	srv      *httptest.Server
}

func newReceiver(t *testing.T, failures int) *receiver {
	r := &receiver{failures: failures}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.got = append(r.got, req)
		r.bodies = append(r.bodies, b)
		if r.failures > 0 {
			r.failures--
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) snapshot() ([]*http.Request, [][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*http.Request(nil), r.got...), append([][]byte(nil), r.bodies...)
}

func TestAlertsSignedRetriedAndAlertmanager(t *testing.T) {
	soc := newReceiver(t, 2)
	am := newReceiver(t, 0)
	secret := []byte("a webhook secret of some length")
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "webhook-secret")
	os.WriteFile(secretFile, append(secret, '\n'), 0o600)
	e := start(t, "", func(st *config.Server) {
		st.Detect.Alerts = config.AlertSettings{Webhooks: []config.Webhook{
			{Name: "soc", URL: soc.srv.URL + "/hook", SecretFile: secretFile, RetryBackoff: wire.Duration(10 * time.Millisecond)},
			{Name: "am", URL: am.srv.URL + "/api/v2/alerts", Format: config.WebhookFormatAlertmanager},
		}}
	})
	e.admin("POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "c.yaml", Content: containPlaybook}}}, nil)
	orders := e.attest(ordersID)
	e.probe(t, orders)

	// The finding, then the incident its notify step announced: two
	// alerts, the first delivered on the third attempt.
	waitFor(t, "two alerts delivered to the SOC webhook", func() bool {
		got, _ := soc.snapshot()
		return len(got) >= 4
	})
	got, bodies := soc.snapshot()
	ids := map[string]int{}
	for i, req := range got {
		if err := detect.VerifySignature(secret, bodies[i], req.Header.Get("X-Moatless-Signature"), time.Now(), 5*time.Minute); err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
		ids[req.Header.Get("X-Moatless-Event-Id")]++
	}
	var first detect.Alert
	if err := json.Unmarshal(bodies[0], &first); err != nil || first.Type != "finding" || first.Finding.Detector != detect.DetectorProbing {
		t.Fatalf("first alert: %s", bodies[0])
	}
	if ids["finding-"+first.Finding.ID] != 3 {
		t.Fatalf("deliveries by event ID: %v (the retried finding should be sent 3 times with one ID)", ids)
	}
	_, amBodies := am.snapshot()
	var amAlerts []struct {
		Labels map[string]string `json:"labels"`
	}
	found := map[string]bool{}
	for _, b := range amBodies {
		if err := json.Unmarshal(b, &amAlerts); err != nil {
			t.Fatalf("alertmanager body %s: %v", b, err)
		}
		found[amAlerts[0].Labels["alertname"]] = true
	}
	if !found["MoatlessFinding"] || !found["MoatlessIncident"] {
		t.Fatalf("alertmanager got %v", found)
	}
	var m string
	{
		resp, err := e.client(nil).Get("https://" + e.addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m = string(b)
	}
	for _, want := range []string{`moatless_detect_alerts_total{outcome="retried",sink="soc"} 2`, `moatless_detect_findings_total{detector="probing",severity="high"} 1`} {
		if !contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestAlertSecretFileMustBePrivate(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	os.WriteFile(secretFile, []byte("a webhook secret of some length\n"), 0o644)
	st := config.DefaultServer(func(string) string { return "" })
	st.DataDir, st.TrustDomain, st.Listen = dir, "example.org", "127.0.0.1:0"
	st.Detect.Alerts = config.AlertSettings{Webhooks: []config.Webhook{{Name: "soc", URL: "https://hooks.example.org/x", SecretFile: secretFile}}}
	st.Complete()
	_, err := server.New(t.Context(), server.Config{Settings: st})
	if err == nil || !contains(err.Error(), "secret_file") || !contains(err.Error(), "chmod 600") {
		t.Fatalf("got %v, want a refusal of a group-readable secret file", err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
