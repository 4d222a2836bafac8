package server_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/telemetry/otlptest"
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
	e.admin("POST", server.PathAdminRevocations, server.RevokeRequest{SPIFFEID: "spiffe://example.org/ns/prod/sa/x", Reason: "test"}, nil)
	for {
		if u := next(t, ch); u.Revocations != nil && len(u.Revocations.SPIFFEIDs) > 0 {
			break
		}
	}
	cancel()
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
	spans := rcv.Wait(t, 10*time.Second, func(s []otlptest.Span) bool {
		return find(s, "POST "+server.PathAdminRevocations) != nil && find(s, "GET /v1/agent/watch") != nil
	})
	w := find(spans, "GET /v1/agent/watch")
	if w.Kind != tracepb.Span_SPAN_KIND_SERVER || w.Attrs["moatless.source.spiffe_id"] != n.id || w.Attrs["http.route"] != "/v1/agent/watch" ||
		w.Attrs["http.response.status_code"] != "200" || w.Attrs["client.address"] != "127.0.0.1" {
		t.Errorf("watch span %+v", w)
	}
	if r := find(spans, "POST "+server.PathAdminRevocations); r.Attrs["http.response.status_code"] != "201" && r.Attrs["http.response.status_code"] != "200" {
		t.Errorf("revoke span %+v", r)
	}
}
