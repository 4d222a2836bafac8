package server

// Alerts: every new finding at or above the configured severity, and
// every incident a notify step announces (and its release), go to the
// log, to metrics and to the configured webhooks: JSON signed with
// HMAC-SHA256, or Alertmanager's v2 body. Deliveries are queued per
// webhook and retried with exponential backoff and jitter; the request
// path never waits for them.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/detect"
)

// alertQueue bounds the alerts waiting for one webhook.
const alertQueue = 1000

// alerter sends findings and incidents to the configured sinks.
type alerter struct {
	log         *slog.Logger
	now         func() time.Time
	minSev      detect.Severity
	suppressFor time.Duration
	sinks       []*webhookSink
	sent        *prometheus.CounterVec // sink, outcome
	// sleep waits d or until ctx ends (false then).
	sleep func(ctx context.Context, d time.Duration) bool
	once  sync.Once
}

type webhookSink struct {
	name, url, format string
	secret            []byte
	client            *http.Client
	timeout, backoff  time.Duration
	attempts          int
	queue             chan *detect.Alert
}

// newAlerter reads the webhooks' secrets and roots; a secret file
// readable by others, or missing, fails the server's start.
func newAlerter(s *Server, st config.AlertSettings, suppressFor time.Duration) (*alerter, error) {
	a := &alerter{log: s.log.With("component", "alerts"), now: s.now, minSev: detect.Severity(st.MinSeverity), suppressFor: suppressFor, sleep: sleepCtx}
	if a.minSev == "" {
		a.minSev = detect.Medium
	}
	a.sent = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moatless_detect_alerts_total",
		Help: "Alert deliveries by sink and outcome: sent, retried, failed (gave up), dropped (queue full)."}, []string{"sink", "outcome"})
	for _, w := range st.Webhooks {
		ws := &webhookSink{name: w.Name, url: w.URL, format: w.Format, timeout: w.Timeout.Std(), backoff: w.RetryBackoff.Std(),
			attempts: w.MaxAttempts, queue: make(chan *detect.Alert, alertQueue)}
		if ws.format == "" {
			ws.format = config.WebhookFormatMoatless
		}
		if ws.timeout == 0 {
			ws.timeout = 5 * time.Second
		}
		if ws.backoff == 0 {
			ws.backoff = time.Second
		}
		if ws.attempts == 0 {
			ws.attempts = 6
		}
		if w.SecretFile != "" {
			b, err := readSecretFile(w.SecretFile, 4096)
			if err != nil {
				return nil, fmt.Errorf("server: detect.alerts.webhooks %s: secret_file: %w", w.Name, err)
			}
			if ws.secret = bytes.TrimSpace(b); len(ws.secret) < 16 {
				return nil, fmt.Errorf("server: detect.alerts.webhooks %s: secret_file: want at least 16 bytes of secret", w.Name)
			}
		}
		conf := &tls.Config{MinVersion: tls.VersionTLS12}
		if w.CAFile != "" {
			pem, err := os.ReadFile(w.CAFile)
			if err != nil {
				return nil, fmt.Errorf("server: detect.alerts.webhooks %s: ca_file: %w", w.Name, err)
			}
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("server: detect.alerts.webhooks %s: ca_file %s holds no PEM certificate", w.Name, w.CAFile)
			}
			conf.RootCAs = pool
		}
		// Redirects are not followed: a receiver cannot bounce signed
		// alerts elsewhere.
		ws.client = &http.Client{Transport: &http.Transport{TLSClientConfig: conf, Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		a.sinks = append(a.sinks, ws)
	}
	return a, nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (a *alerter) configured() bool { return a != nil && len(a.sinks) > 0 }

func (a *alerter) names() []string {
	var out []string
	for _, s := range a.sinks {
		out = append(out, s.name)
	}
	return out
}

// run delivers until ctx ends: one goroutine per webhook.
func (a *alerter) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, s := range a.sinks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case al := <-s.queue:
					a.deliver(ctx, s, al)
				}
			}
		}()
	}
	wg.Wait()
}

// finding alerts a new finding at or above the minimum severity.
func (a *alerter) finding(f *detect.Finding) {
	if a == nil || f.Severity.Weight() < a.minSev.Weight() {
		return
	}
	c := *f
	a.enqueue(&detect.Alert{ID: "finding-" + f.ID, Type: "finding", Finding: &c})
}

// incident alerts an incident (announced by a notify step, or released).
func (a *alerter) incident(inc *detect.Incident) {
	if a == nil {
		return
	}
	c := *inc
	c.Steps = append([]detect.StepResult(nil), inc.Steps...)
	a.enqueue(&detect.Alert{ID: "incident-" + inc.ID + "-" + inc.State, Type: "incident", Incident: &c})
}

func (a *alerter) enqueue(al *detect.Alert) {
	attrs := []any{"type", al.Type, "id", al.ID}
	if f := al.Finding; f != nil {
		attrs = append(attrs, "detector", f.Detector, "severity", f.Severity, "identity", f.Identity, "summary", f.Summary)
	}
	if inc := al.Incident; inc != nil {
		attrs = append(attrs, "identity", inc.Identity, "state", inc.State, "trigger", inc.Trigger)
	}
	a.log.Warn("alert", attrs...)
	for _, s := range a.sinks {
		select {
		case s.queue <- al:
		default:
			a.sent.WithLabelValues(s.name, "dropped").Inc()
			a.log.Error("alert dropped: the webhook's queue is full", "sink", s.name, "id", al.ID)
		}
	}
}

// deliver sends one alert to one webhook, retrying network errors, 5xx,
// 408 and 429 with exponential backoff (full jitter, at most a minute,
// Retry-After honoured up to a minute). Other 4xx answers are final.
func (a *alerter) deliver(ctx context.Context, s *webhookSink, shared *detect.Alert) {
	// Every webhook's goroutine gets the same alert: stamp a copy.
	c := *shared
	al := &c
	al.SentAt = a.now().UTC()
	var body []byte
	var err error
	if s.format == config.WebhookFormatAlertmanager {
		body, err = detect.AlertmanagerBody(al, a.suppressFor)
	} else {
		body, err = json.Marshal(al)
	}
	if err != nil {
		a.sent.WithLabelValues(s.name, "failed").Inc()
		a.log.Error("alert not encoded", "sink", s.name, "id", al.ID, "err", err)
		return
	}
	wait := s.backoff
	for attempt := 1; ; attempt++ {
		retry, after, err := a.post(ctx, s, al.ID, body)
		if err == nil {
			a.sent.WithLabelValues(s.name, "sent").Inc()
			return
		}
		if !retry || attempt >= s.attempts {
			a.sent.WithLabelValues(s.name, "failed").Inc()
			a.log.Error("alert not delivered", "sink", s.name, "id", al.ID, "attempts", attempt, "err", err)
			return
		}
		a.sent.WithLabelValues(s.name, "retried").Inc()
		d := max(after, time.Duration(rand.Int64N(int64(wait)+1)))
		a.log.Warn("alert delivery failed; retrying", "sink", s.name, "id", al.ID, "attempt", attempt, "in", d.Round(time.Millisecond), "err", err)
		if !a.sleep(ctx, d) {
			return
		}
		wait = min(2*wait, time.Minute)
	}
}

// post makes one attempt. retry says whether another may succeed; after
// is the receiver's Retry-After.
func (a *alerter) post(ctx context.Context, s *webhookSink, id string, body []byte) (retry bool, after time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return false, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "moatless-server")
	req.Header.Set("X-Moatless-Event-Id", id)
	if len(s.secret) > 0 {
		req.Header.Set("X-Moatless-Signature", detect.Sign(s.secret, body, a.now()))
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return true, 0, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode/100 == 2:
		return false, 0, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode >= 500:
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
			after = min(time.Duration(secs)*time.Second, time.Minute)
		}
		return true, after, fmt.Errorf("receiver answered %d", resp.StatusCode)
	}
	return false, 0, fmt.Errorf("receiver answered %d (not retried)", resp.StatusCode)
}
