package server_test

import (
	"context"
	"log/slog"
	"net/http"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/telemetry/otlptest"
	"github.com/moatless/moatless/internal/wire"
)

// TestTracedServer: with a Tracer, requests get route-named server
// spans with the mTLS caller's SPIFFE ID, and the long-lived watch stream
// still streams through the traced handler (flushes and deadlines reach
// the connection); spans reach a real OTLP receiver on loopback.
func TestTracedServer(t *testing.T) {
	rcv := otlptest.Start(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.HTTPEndpoint)
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50") // the watch span ends after the test hangs up
	tr, err := telemetry.StartTracing(context.Background(), telemetry.TracingConfig{Enabled: true, Protocol: telemetry.ProtocolHTTP}, "cp", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	e := startTB(t, "", func(c *server.Config) { c.Tracer = tr.Tracer("server") })
	n := e.attest("spiffe://example.org/sidecar/orders")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := e.watch(ctx, n)
	next(t, ch) // the first update arrives through the traced handler
	e.admin("POST", server.PathAdminRevocations, server.RevokeRequest{SPIFFEID: "spiffe://example.org/ns/prod/sa/x", Reason: "test", Force: true}, nil)
	for {
		if u := next(t, ch); u.Revocations != nil && len(u.Revocations.SPIFFEIDs) > 0 {
			break
		}
	}
	// Another node reports the orders node probing it: its risk score
	// (0.5) is on the spans of its requests from then on.
	reporter := e.attest(ordersID)
	deny := inboundEdge(n.id, "GET", "/admin/{*}", "deny", 40)
	deny.Reason, deny.Status = "no_allow_match", 4
	if st, body := e.do(reporter.http, "POST", wire.PathRecords, "", e.report(deny)); st != 204 {
		t.Fatalf("report: %d %s", st, body)
	}
	for {
		if u := next(t, ch); u.Risk != nil && len(u.Risk.Scores) == 1 {
			break
		}
	}
	cancel()
	// A mesh member's trace is continued; an anonymous caller's is only
	// linked from a new one.
	const callerTrace, callerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	for _, c := range []*http.Client{n.http, e.client(nil)} {
		req, _ := http.NewRequest("GET", "https://"+e.addr+"/readyz", nil)
		req.Header.Set("Traceparent", "00-"+callerTrace+"-"+callerSpan+"-01")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		tr.Shutdown(sctx)
	})
	find := func(s []otlptest.Span, name string) *otlptest.Span {
		for i := range s {
			if s[i].Name == name {
				return &s[i]
			}
		}
		return nil
	}
	readyz := func(s []otlptest.Span) (member, anon *otlptest.Span) {
		for i := range s {
			if s[i].Name == "GET /readyz" && s[i].TraceID == callerTrace {
				member = &s[i]
			}
			if s[i].Name == "GET /readyz" && len(s[i].Links) == 1 {
				anon = &s[i]
			}
		}
		return member, anon
	}
	spans := rcv.Wait(t, 10*time.Second, func(s []otlptest.Span) bool {
		m, a := readyz(s)
		return find(s, "POST "+server.PathAdminRevocations) != nil && find(s, "GET /v1/agent/watch") != nil && m != nil && a != nil
	})
	member, anon := readyz(spans)
	if member.ParentSpanID != callerSpan || member.Attrs["moatless.source.spiffe_id"] != n.id || member.Attrs["moatless.source.risk_score"] != "0.5" {
		t.Errorf("a node's request must continue its trace, with its risk score: %+v", member)
	}
	if anon.Attrs["moatless.source.risk_score"] != "0" {
		t.Errorf("an anonymous request's risk score: %q, want 0", anon.Attrs["moatless.source.risk_score"])
	}
	if anon.TraceID == callerTrace || anon.ParentSpanID != "" || anon.Links[0] != callerTrace+"-"+callerSpan {
		t.Errorf("an anonymous request must start a new trace linked to its own: %+v", anon)
	}
	w := find(spans, "GET /v1/agent/watch")
	if w.Kind != tracepb.Span_SPAN_KIND_SERVER || w.Attrs["moatless.source.spiffe_id"] != n.id || w.Attrs["http.route"] != "/v1/agent/watch" ||
		w.Attrs["http.response.status_code"] != "200" || w.Attrs["client.address"] != "127.0.0.1" {
		t.Errorf("watch span %+v", w)
	}
	if r := find(spans, "POST "+server.PathAdminRevocations); r.Attrs["http.response.status_code"] != "201" && r.Attrs["http.response.status_code"] != "200" {
		t.Errorf("revoke span %+v", r)
	}
}
