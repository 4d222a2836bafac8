package gateway

import (
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/moatless/moatless/internal/testpki"
)

// logLines returns the JSON log records whose msg contains part.
func logLines(t *testing.T, logs, part string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if msg, _ := rec["msg"].(string); strings.Contains(msg, part) {
			out = append(out, rec)
		}
	}
	return out
}

// TestCertificateReloadLogsOncePerFailure: the watch loop re-reads the
// TLS certificate every reload interval. Each call of ReloadCertificate
// here is one tick. A failure is logged once however many ticks it lasts
// (a new, different failure once more), and once when reloads work again;
// the last good certificate is served throughout, and the failing state
// is a gauge. Before, every tick of a failure logged an error line.
func TestCertificateReloadLogsOncePerFailure(t *testing.T) {
	reg := prometheus.NewRegistry()
	tg := startGatewayWith(t, testpki.NewCA(t, td), "127.0.0.1:1", nil, func(o *Options) { o.Registerer = reg })
	certFile, keyFile := filepath.Join(tg.dir, "gw.pem"), filepath.Join(tg.dir, "gw-key.pem")
	goodCert, _ := os.ReadFile(certFile)
	servedSerial := func() string {
		t.Helper()
		c, err := tls.Dial("tcp", tg.addr, &tls.Config{RootCAs: tg.ca.Pool(), ServerName: "localhost"})
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	first := servedSerial()
	failing := func() float64 { return testutil.ToFloat64(tg.g.metrics.certReloadFailing) }
	tick := func(n int) {
		for range n {
			tg.g.ReloadCertificate()
		}
	}
	errorsLogged := func() int { return len(logLines(t, tg.logs.String(), "TLS certificate reload failed")) }

	steps := []struct {
		name        string
		change      func()
		ticks       int
		wantErrors  int // error lines logged so far
		wantFailing float64
	}{
		{"unchanged_files_log_nothing", func() {}, 3, 0, 0},
		{"half_written_cert_logged_once", func() { os.WriteFile(certFile, goodCert[:len(goodCert)/2], 0o600) }, 5, 1, 1},
		{"different_failure_logged_once_more", func() { os.Remove(keyFile) }, 4, 2, 1},
		{"same_failure_again_after_a_pause_not_relogged", func() {}, 3, 2, 1},
	}
	for _, s := range steps {
		s.change()
		tick(s.ticks)
		if got := errorsLogged(); got != s.wantErrors {
			t.Fatalf("%s: %d error lines, want %d:\n%s", s.name, got, s.wantErrors, tg.logs.String())
		}
		if got := failing(); got != s.wantFailing {
			t.Fatalf("%s: failing gauge %v, want %v", s.name, got, s.wantFailing)
		}
		if got := servedSerial(); got != first {
			t.Fatalf("%s: served certificate changed to serial %s while reloads failed", s.name, got)
		}
	}
	if got := testutil.ToFloat64(tg.g.metrics.reloadFailures.WithLabelValues("tls")); got != 12 {
		t.Fatalf("reload_failures_total{what=tls} = %v, want one per failed tick (12)", got)
	}

	// A new pair recovers: one line, the gauge back to 0, the new
	// certificate served, and nothing more on the following ticks.
	writeServerCert(t, tg.ca, tg.dir)
	tick(3)
	recovered := logLines(t, tg.logs.String(), "TLS certificate reload works again")
	if len(recovered) != 1 || errorsLogged() != 2 || failing() != 0 {
		t.Fatalf("after the fix: %d recovery lines, %d error lines, failing %v:\n%s", len(recovered), errorsLogged(), failing(), tg.logs.String())
	}
	if recovered[0]["changed"] != true || recovered[0]["not_after"] == nil {
		t.Fatalf("recovery line %v: want changed=true and not_after", recovered[0])
	}
	if got := servedSerial(); got == first {
		t.Fatal("the new certificate is not served after the recovery")
	}
	if n := len(logLines(t, tg.logs.String(), "TLS certificate reloaded")); n != 0 {
		t.Fatalf("the recovering reload logged a second line (%d)", n)
	}
	if ts := testutil.ToFloat64(tg.g.metrics.certNotAfter); ts <= 0 {
		t.Fatalf("certificate expiry gauge %v", ts)
	}

	// A plain rotation, with no failure before it, is one info line.
	writeServerCert(t, tg.ca, tg.dir)
	tick(2)
	if n := len(logLines(t, tg.logs.String(), "TLS certificate reloaded")); n != 1 {
		t.Fatalf("rotation: %d lines, want 1:\n%s", n, tg.logs.String())
	}
}

// TestServedCertificateExpiryLoggedOnce: files that do not change while
// the certificate they hold expires load fine on every tick, but clients
// refuse that certificate; the gateway says so once, and again only after
// a new certificate was in force and expired too.
func TestServedCertificateExpiryLoggedOnce(t *testing.T) {
	clock := struct {
		sync.Mutex
		t time.Time
	}{t: time.Now()}
	now := func() time.Time { clock.Lock(); defer clock.Unlock(); return clock.t }
	advance := func(d time.Duration) { clock.Lock(); clock.t = clock.t.Add(d); clock.Unlock() }
	ca := testpki.NewCA(t, td)
	ca.Now = now
	tg := startGatewayWith(t, ca, "127.0.0.1:1", nil, func(o *Options) { o.Now = now })
	expired := func() int { return len(logLines(t, tg.logs.String(), "TLS certificate being served has expired")) }
	steps := []struct {
		name   string
		change func()
		want   int
	}{
		{"valid", func() {}, 0},
		{"expired_logged_once", func() { advance(2 * time.Hour) }, 1},
		{"renewed", func() { writeServerCert(t, ca, tg.dir) }, 1},
		{"renewed_one_expired_again", func() { advance(2 * time.Hour) }, 2},
	}
	for _, s := range steps {
		s.change()
		for range 4 {
			if _, err := tg.g.ReloadCertificate(); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
		}
		if got := expired(); got != s.want {
			t.Fatalf("%s: %d expiry lines, want %d:\n%s", s.name, got, s.want, tg.logs.String())
		}
	}
}
