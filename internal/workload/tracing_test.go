package workload

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/telemetry/otlptest"
	"github.com/moatless/moatless/internal/wire"
)

// TestTracingSpans: spans reach a real OTLP receiver. A caller's
// traceparent is a link, never the parent (a local process does not pick
// the agent's trace IDs); a call refused for its missing security header
// records no attestation; a stream makes a span per answer sent and none
// for a re-check that changed nothing.
func TestTracingSpans(t *testing.T) {
	rcv := otlptest.Start(t)
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.GRPCEndpoint)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	tr, err := telemetry.StartTracing(context.Background(), telemetry.TracingConfig{Enabled: true, Protocol: telemetry.ProtocolGRPC}, "agent", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Shutdown(context.Background()) })
	// The server holds web at risk 0.75: the spans serving it say so.
	risk := &telemetry.RiskScores{}
	risk.Set(wire.RiskScores{Scores: []wire.RiskScore{{SPIFFEID: "spiffe://" + td + "/web", Score: 0.75}}})
	f := newFixtureWith(t, func(c *Config) { c.Tracer, c.Risk = tr.Tracer("wl"), risk })
	web := f.identity("spiffe://"+td+"/web", time.Hour, uidSelector())
	f.publish(1, nil, web)
	raw := f.raw(t)
	const callerTrace, callerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	ctx := metadata.AppendToOutgoingContext(withHeader(ctxT(t)), "traceparent", "00-"+callerTrace+"-"+callerSpan+"-01")
	if _, err := raw.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"orders"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.FetchJWTSVID(ctxT(t), &workload.JWTSVIDRequest{Audience: []string{"orders"}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("no security header: %v", err)
	}
	stream, err := raw.FetchX509SVID(withHeader(ctxT(t)), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	f.publish(1, nil, web) // the same answer: nothing sent
	f.publish(2, nil, f.identity("spiffe://"+td+"/web", time.Hour, uidSelector()))
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	// The server ends a stream answer's span after the answer is on its
	// way: wait for the spans rather than shut the exporter down.
	spans := rcv.Wait(t, 20*time.Second, func(s []otlptest.Span) bool { return len(s) >= 4 })
	var jwt, refused *otlptest.Span
	var x509 []otlptest.Span
	for i, s := range spans {
		switch {
		case s.Name == "SpiffeWorkloadAPI/FetchJWTSVID" && s.Attrs["rpc.grpc.status_code"] == "0":
			jwt = &spans[i]
		case s.Name == "SpiffeWorkloadAPI/FetchJWTSVID":
			refused = &spans[i]
		case s.Name == "SpiffeWorkloadAPI/FetchX509SVID":
			x509 = append(x509, s)
		}
	}
	if jwt == nil || jwt.TraceID == callerTrace || jwt.ParentSpanID != "" || len(jwt.Links) != 1 || jwt.Links[0] != callerTrace+"-"+callerSpan {
		t.Errorf("the caller's trace context must be a link, not the parent: %+v", jwt)
	}
	if jwt != nil && (jwt.Attrs["moatless.workload.spiffe_ids"] != "["+web.SPIFFEID.String()+"]" || jwt.Attrs["moatless.workload.attestation"] != "success" ||
		jwt.Attrs["moatless.workload.caller.uid"] != strconv.Itoa(os.Geteuid()) || jwt.Kind != tracepb.Span_SPAN_KIND_SERVER ||
		jwt.Attrs["moatless.workload.risk_score"] != "0.75") {
		t.Errorf("FetchJWTSVID span: %+v", jwt.Attrs)
	}
	if refused == nil || refused.Attrs["rpc.grpc.status_code"] != "3" || refused.StatusCode != tracepb.Status_STATUS_CODE_ERROR {
		t.Errorf("refused call's span: %+v", refused)
	} else if _, ok := refused.Attrs["moatless.workload.attestation"]; ok {
		t.Errorf("a call refused before attestation records one: %v", refused.Attrs)
	}
	if len(x509) != 2 || x509[0].Attrs["moatless.workload.stream.update"] != "0" || x509[1].Attrs["moatless.workload.stream.update"] != "1" ||
		x509[1].Attrs["moatless.workload.risk_score"] != "0.75" {
		t.Errorf("stream spans: want one per answer sent (2), got %d: %+v", len(x509), x509)
	}
}

// TestTracingOff: without a Tracer the call path makes no span (nil
// *call methods are no-ops).
func TestTracingOff(t *testing.T) {
	f := newFixture(t)
	if c := f.srv.startCall(context.Background(), "FetchJWTSVID", -1); c != nil {
		t.Fatal("a call without a Tracer started a span")
	}
	var c *call
	c.set(attrJWTValid.Bool(true))
	c.served(nil)
	c.end(nil)
	if c.next(1) != nil {
		t.Fatal("next of no call")
	}
}
