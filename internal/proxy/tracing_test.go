package proxy

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/telemetry/otlptest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// traceApp records the trace headers of every request it serves, and
// what during (when set) returns while serving it.
type traceApp struct {
	mu     sync.Mutex
	seen   map[string][]string // request path -> Traceparent values
	during atomic.Pointer[func() int]
	fast   map[string]int // request path -> during()
}

func startTraceApp(t *testing.T) (*traceApp, string) {
	a := &traceApp{seen: map[string][]string{}, fast: map[string]int{}}
	l := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.seen[r.URL.Path] = r.Header.Values("Traceparent")
		if f := a.during.Load(); f != nil {
			a.fast[r.URL.Path] = (*f)()
		}
		a.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return a, l.Addr().String()
}

func (a *traceApp) traceparents(path string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[path]
}

// fastServing is how many connections s's listeners serve on the HTTP/1.1
// fast path at this moment.
func fastServing(s *Sidecar) int {
	n := 0
	count := func(f *fastConns) {
		f.mu.Lock()
		n += len(f.m)
		f.mu.Unlock()
	}
	for _, ib := range s.inbound {
		count(&ib.fast)
	}
	for _, ob := range s.outbound {
		count(&ob.fast)
	}
	return n
}

// TestTracingThroughTheMesh runs a request app → outbound sidecar →
// inbound sidecar → app (HTTP/1.1 between the sidecars) with both
// sidecars exporting to a real OTLP receiver on loopback, and checks the
// spans, their parents and what the app was handed — on both server
// paths, the fast path being the one that serves each request when on.
func TestTracingThroughTheMesh(t *testing.T) { forServerPaths(t, testTracingThroughTheMesh) }

func testTracingThroughTheMesh(t *testing.T, sp serverPath) {
	rcv := otlptest.Start(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.GRPCEndpoint)
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "")
	cfg, err := telemetry.ParseTracingConfig(func(k string) string {
		return map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rcv.GRPCEndpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	newTracing := func(service string) *telemetry.Tracing {
		tr, err := telemetry.StartTracing(ctx, cfg, service, discardLogger())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Shutdown(ctx) })
		return tr
	}
	serverTr, clientTr := newTracing("orders"), newTracing("frontend")

	app, appAddr := startTraceApp(t)
	ca := testpki.NewCA(t, "example.org")
	inL := listen(t)
	decisions := &syncBuf{}
	// The server pushed a score for frontend; the outbound sidecar knows
	// none (its spans say 0).
	risk := &telemetry.RiskScores{}
	risk.Set(wire.RiskScores{Scores: []wire.RiskScore{{SPIFFEID: frontendID, Score: 0.75}, {SPIFFEID: ordersID, Score: 0.25}}})
	server := startSidecar(t, Config{Risk: risk, Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
		DecisionLog: slog.New(slog.NewJSONHandler(decisions, nil)), AllowSampleRate: 1,
		Inbound:    []Inbound{{Name: "in", Listener: inL, App: appAddr, Protocol: HTTP}},
		Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"), Tracer: serverTr.Tracer("moatless/sidecar"),
		DisableHTTP1FastPath: sp.disable})
	outL := listen(t)
	client := startSidecar(t, Config{Identity: newStaticIdentity(ca, ca.SVID(t, frontendID, 0)),
		Outbound: []Outbound{{Name: "out", Listener: outL, Upstream: inL.Addr().String(), ID: spiffeid.RequireFromString(ordersID), Protocol: HTTP, HTTP1: true}},
		Tracer:   clientTr.Tracer("moatless/sidecar"), DisableHTTP1FastPath: sp.disable})
	// Which path served each request the app got: both sidecars' fast
	// path connections, counted while the app serves it.
	during := func() int { return fastServing(server)*10 + fastServing(client) }
	app.during.Store(&during)
	base := "http://" + outL.Addr().String()

	const secret = "s3cr3t-token-value"
	send := func(method, path string, traceparents ...string) int {
		req, _ := http.NewRequest(method, base+path+"?access_token="+secret, nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		req.Header.Set("Cookie", "session="+secret)
		for _, tp := range traceparents {
			req.Header.Add("Traceparent", tp)
		}
		req.Header.Set("Tracestate", "vendor=opaque")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	const (
		sampledTrace   = "4bf92f3577b34da6a3ce929d0e0e4736"
		unsampledTrace = "0af7651916cd43dd8448eb211c80319c"
		deniedTrace    = "11111111111111111111111111111111"
		callerSpan     = "00f067aa0ba902b7"
	)
	// Not sampled by the caller: propagated, not recorded.
	if got := send("GET", "/unsampled", "00-"+unsampledTrace+"-"+callerSpan+"-00"); got != 200 {
		t.Fatalf("unsampled: %d", got)
	}
	// Sampled, with a second traceparent behind the first (a confused or
	// hostile caller): the app gets exactly one, the sidecar's.
	if got := send("GET", "/api/orders", "00-"+sampledTrace+"-"+callerSpan+"-01", "00-"+deniedTrace+"-"+callerSpan+"-01"); got != 200 {
		t.Fatalf("allowed: %d", got)
	}
	if got := send("DELETE", "/api/orders/1", "00-"+deniedTrace+"-"+callerSpan+"-01"); got != 403 {
		t.Fatalf("denied: %d", got)
	}
	// A malformed traceparent starts a new trace.
	if got := send("GET", "/garbage", "00-zz-"+callerSpan+"-01"); got != 200 {
		t.Fatalf("garbage: %d", got)
	}
	// The fast path ends a span after the response is written, so the
	// client can have its answer a moment before: flush until all six
	// arrive (a Shutdown here would drop a late one).
	spans := rcv.WaitFlushing(t, 10*time.Second, func(s []otlptest.Span) bool { return len(s) >= 6 }, serverTr.ForceFlush, clientTr.ForceFlush)

	byTrace := func(trace string, kind tracepb.Span_SpanKind) *otlptest.Span {
		for i := range spans {
			if spans[i].TraceID == trace && spans[i].Kind == kind {
				return &spans[i]
			}
		}
		return nil
	}
	out, in := byTrace(sampledTrace, tracepb.Span_SPAN_KIND_CLIENT), byTrace(sampledTrace, tracepb.Span_SPAN_KIND_SERVER)
	if out == nil || in == nil {
		t.Fatalf("no client and server span in the sampled trace:\n%v", spans)
	}
	if out.ParentSpanID != callerSpan || in.ParentSpanID != out.SpanID {
		t.Errorf("parents: outbound %s (want the caller's %s), inbound %s (want the outbound span %s)", out.ParentSpanID, callerSpan, in.ParentSpanID, out.SpanID)
	}
	if tps := app.traceparents("/api/orders"); len(tps) != 1 || tps[0] != "00-"+sampledTrace+"-"+in.SpanID+"-01" {
		t.Errorf("the app got traceparent %q, want one naming the inbound span %s", tps, in.SpanID)
	}
	wantIn := map[string]string{
		"moatless.source.spiffe_id": frontendID, "moatless.destination.spiffe_id": ordersID, "moatless.listener": "in",
		"moatless.decision": "allow", "moatless.decision.reason": "allowed", "moatless.policy": "prod/allow", "moatless.policy.rule": "0",
		"moatless.authn.peer": "mtls", "moatless.authn.token": "none", "http.request.method": "GET", "url.path": "/api/orders",
		"http.response.status_code": "200", "source.address": "127.0.0.1", "moatless.source.risk_score": "0.75",
	}
	for k, v := range wantIn {
		if in.Attrs[k] != v {
			t.Errorf("inbound span %s = %q, want %q", k, in.Attrs[k], v)
		}
	}
	if in.Name != "inbound in" || out.Name != "outbound out" || in.Service != "orders" || out.Service != "frontend" {
		t.Errorf("names %q %q services %q %q", in.Name, out.Name, in.Service, out.Service)
	}
	if out.Attrs["moatless.destination.spiffe_id"] != ordersID || out.Attrs["moatless.source.spiffe_id"] != frontendID || out.Attrs["http.response.status_code"] != "200" ||
		out.Attrs["moatless.source.risk_score"] != "0" {
		t.Errorf("outbound span attributes %v", out.Attrs)
	}
	denied := byTrace(deniedTrace, tracepb.Span_SPAN_KIND_SERVER)
	if denied == nil || denied.Attrs["moatless.decision"] != "deny" || denied.Attrs["moatless.policy"] != "prod/deny-delete" ||
		denied.Attrs["moatless.decision.reason"] != "deny_rule" || denied.Attrs["http.response.status_code"] != "403" {
		t.Errorf("denied request's span: %+v", denied)
	}
	if s := byTrace(unsampledTrace, tracepb.Span_SPAN_KIND_SERVER); s != nil {
		t.Errorf("a trace the caller did not sample was recorded: %+v", s)
	}
	if tps := app.traceparents("/unsampled"); len(tps) != 1 || !strings.HasPrefix(tps[0], "00-"+unsampledTrace+"-") || !strings.HasSuffix(tps[0], "-00") {
		t.Errorf("unsampled trace context not propagated: %q", tps)
	}
	if tps := app.traceparents("/garbage"); len(tps) != 1 || strings.Contains(tps[0], "zz") {
		t.Errorf("malformed traceparent reached the app: %q", tps)
	}
	// The decision log names each sampled request's trace, and only those.
	for _, want := range []struct {
		path, trace string
	}{{"/api/orders", sampledTrace}, {"/api/orders/1", deniedTrace}, {"/unsampled", ""}} {
		found := false
		for _, line := range strings.Split(decisions.String(), "\n") {
			if strings.Contains(line, `"path":"`+want.path+`"`) {
				found = true
				if got := strings.Contains(line, `"trace_id"`); got != (want.trace != "") || (want.trace != "" && !strings.Contains(line, `"trace_id":"`+want.trace+`"`)) {
					t.Errorf("decision line for %s: %s, want trace %q", want.path, line, want.trace)
				}
			}
		}
		if !found {
			t.Errorf("no decision line for %s:\n%s", want.path, decisions.String())
		}
	}
	// Each request the app got was served by the fast path of both
	// sidecars, or (fast path off) by neither.
	app.mu.Lock()
	for path, n := range app.fast {
		if got, want := n > 10 && n%10 > 0, !sp.disable; got != want || (sp.disable && n != 0) {
			t.Errorf("%s: %d fast path connections on the inbound side, %d on the outbound side while the app served it; fast path on: %v", path, n/10, n%10, want)
		}
	}
	app.mu.Unlock()
	// No credential in any span.
	for _, s := range spans {
		for k, v := range s.Attrs {
			if strings.Contains(v, secret) {
				t.Errorf("span %s attribute %s carries the token: %q", s.Name, k, v)
			}
		}
	}
}

// TestTracingPlaintextCallerIsLinked: under PERMISSIVE, a plaintext
// caller (no verified identity) cannot make its trace the parent of the
// sidecar's: the span starts a new trace linked to the caller's, and the
// app is handed the new one. On both server paths.
func TestTracingPlaintextCallerIsLinked(t *testing.T) {
	forServerPaths(t, testTracingPlaintextCallerIsLinked)
}

func testTracingPlaintextCallerIsLinked(t *testing.T, sp serverPath) {
	rcv := otlptest.Start(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.GRPCEndpoint)
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "")
	tr, err := telemetry.StartTracing(context.Background(), telemetry.TracingConfig{Enabled: true, Protocol: telemetry.ProtocolGRPC}, "orders", discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	app, appAddr := startTraceApp(t)
	ca := testpki.NewCA(t, "example.org")
	inL := listen(t)
	allowAll := &fakeAuthz{mode: policy.ModePermissive, evaluate: func(*policy.Request) policy.Decision {
		return policy.Decision{Outcome: policy.Allow, Policy: "prod/allow-all", Action: "ALLOW", Rule: 0}
	}}
	startSidecar(t, Config{Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
		Inbound: []Inbound{{Name: "in", Listener: inL, App: appAddr, Protocol: HTTP}}, Authorizer: allowAll, Tracer: tr.Tracer("sidecar"),
		DisableHTTP1FastPath: sp.disable})
	const callerTrace, callerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req, _ := http.NewRequest("GET", "http://"+inL.Addr().String()+"/plain", nil)
	req.Header.Set("Traceparent", "00-"+callerTrace+"-"+callerSpan+"-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("plaintext under PERMISSIVE: %d", resp.StatusCode)
	}
	t.Cleanup(func() { tr.Shutdown(context.Background()) })
	s := rcv.WaitFlushing(t, 10*time.Second, func(s []otlptest.Span) bool { return len(s) >= 1 }, tr.ForceFlush)[0]
	if s.TraceID == callerTrace || s.ParentSpanID != "" || len(s.Links) != 1 || s.Links[0] != callerTrace+"-"+callerSpan {
		t.Fatalf("span %+v: want a new trace linked to the caller's", s)
	}
	if s.Attrs["moatless.authn.peer"] != "plaintext" || s.Attrs["moatless.source.spiffe_id"] != "" {
		t.Errorf("attributes %v", s.Attrs)
	}
	if tps := app.traceparents("/plain"); len(tps) != 1 || tps[0] != "00-"+s.TraceID+"-"+s.SpanID+"-01" {
		t.Errorf("the app got %q, want the sidecar's new trace", tps)
	}
}

// TestTracedFastPathUnderAttack: with tracing on, the fast path still
// refuses what it refuses untraced (CL.TE: 400 and the connection closed,
// the app sees nothing; an undecidable target likewise), the refused
// request's span says 400 and carries no decision, and a trace context
// under a name that only folds into traceparent ("Trace_parent") is not
// taken as the caller's.
func TestTracedFastPathUnderAttack(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(sr))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	ca := testpki.NewCA(t, "example.org")
	app := newRecordingApp(t)
	parsed, err := policy.Parse(strings.NewReader(attackPolicies))
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.Compile(parsed, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, inL := startEngineSidecar(t, ca, set, app.addr, true, func(c *Config) { c.Tracer = tp.Tracer("sidecar") })
	const callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	tests := []struct {
		name string
		raw  string
		want []int
		app  []string
		// span: the status of the one span the sidecar ends, and whether
		// it carries a decision.
		status   int64
		decision bool
	}{
		{"cl_te", "POST /api/x HTTP/1.1\r\nHost: orders\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGGET /api/x HTTP/1.1\r\nHost: orders\r\n\r\n",
			[]int{400}, nil, -1, false},
		{"fragment", "GET /api/x#/../internal HTTP/1.1\r\nHost: orders\r\n\r\nGET /api/x HTTP/1.1\r\nHost: orders\r\n\r\n",
			[]int{400}, nil, 400, false},
		{"underscore_trace_context", "GET /api/x HTTP/1.1\r\nHost: orders\r\nTrace_parent: 00-" + callerTrace + "-00f067aa0ba902b7-01\r\nConnection: close\r\n\r\n",
			[]int{200}, []string{"/api/x"}, 200, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			app.take()
			before := len(sr.Ended())
			c, err := tls.Dial("tcp", inL.Addr().String(), &tls.Config{Certificates: []tls.Certificate{ca.SVID(t, frontendID, 0).TLSCertificate()},
				RootCAs: ca.Pool(), InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatal(err)
			}
			checkRawExchange(t, c, app, tc.raw, tc.want, tc.app)
			spans := sr.Ended()[before:]
			if tc.status < 0 { // refused by the parser: before any span
				if len(spans) != 0 {
					t.Fatalf("%d spans for a request the parser refused", len(spans))
				}
				return
			}
			if len(spans) != 1 {
				t.Fatalf("%d spans, want 1", len(spans))
			}
			sp := spans[0]
			attrs := map[string]attribute.Value{}
			for _, kv := range sp.Attributes() {
				attrs[string(kv.Key)] = kv.Value
			}
			_, decided := attrs["moatless.decision"]
			if attrs["http.response.status_code"].AsInt64() != tc.status || decided != tc.decision {
				t.Errorf("span status %v, decision %v; want %d, %v", attrs["http.response.status_code"], decided, tc.status, tc.decision)
			}
			if sp.SpanContext().TraceID().String() == callerTrace || sp.Parent().IsValid() {
				t.Errorf("the span took a trace context the sidecar does not read: trace %s, parent %v", sp.SpanContext().TraceID(), sp.Parent())
			}
		})
	}
	if fastServing(s) != 0 {
		t.Error("connections left on the fast path")
	}
}
