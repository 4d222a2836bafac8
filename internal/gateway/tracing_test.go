package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/telemetry/otlptest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// TestGatewayTracing: with a Tracer, every request is a new trace linked
// to the one the internet caller named (never its child), the upstream
// gets the gateway span's context, and blocks and decisions are on the
// span; spans reach a real OTLP receiver over loopback.
func TestGatewayTracing(t *testing.T) {
	rcv := otlptest.Start(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.GRPCEndpoint)
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "")
	tr, err := telemetry.StartTracing(context.Background(), telemetry.TracingConfig{Enabled: true, Protocol: telemetry.ProtocolGRPC}, "edge", discard())
	if err != nil {
		t.Fatal(err)
	}
	ca := testpki.NewCA(t, td)
	up := startUpstream(t, ca, ordersID, echoApp(t))
	tg := startGatewayWith(t, ca, up, nil, func(o *Options) { o.Tracer = tr.Tracer("gw") })

	const (
		callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
		callerSpan  = "00f067aa0ba902b7"
		secret      = "gw-secret-token"
	)
	hdr := map[string]string{"Traceparent": "00-" + callerTrace + "-" + callerSpan + "-01", "Cookie": "s=" + secret}
	resp, body := tg.do(t, "GET", "/orders/42?access_token="+secret, nil, hdr)
	if resp.StatusCode != 200 {
		t.Fatalf("allowed: %d %s", resp.StatusCode, body)
	}
	tps := decodeSeen(t, body).Headers["Traceparent"]
	if resp, _ := tg.do(t, "DELETE", "/orders/42", nil, hdr); resp.StatusCode != 403 {
		t.Fatalf("denied: %d", resp.StatusCode)
	}
	if resp, _ := tg.do(t, "GET", "/admin", nil, nil); resp.StatusCode != 403 {
		t.Fatalf("no allow rule: %d", resp.StatusCode)
	}
	t.Cleanup(func() { tr.Shutdown(context.Background()) })
	spans := rcv.WaitFlushing(t, 10*time.Second, func(s []otlptest.Span) bool { return len(s) >= 3 }, tr.ForceFlush)
	byMethod := map[string]otlptest.Span{}
	for _, s := range spans {
		byMethod[s.Attrs["http.request.method"]+" "+s.Attrs["url.path"]] = s
	}
	get := byMethod["GET /orders/42"]
	if get.TraceID == "" || get.TraceID == callerTrace || get.ParentSpanID != "" {
		t.Fatalf("the gateway's span must start a new trace: %+v", get)
	}
	if len(get.Links) != 1 || get.Links[0] != callerTrace+"-"+callerSpan {
		t.Errorf("links %v, want the caller's span", get.Links)
	}
	if len(tps) != 1 || tps[0] != "00-"+get.TraceID+"-"+get.SpanID+"-01" {
		t.Errorf("the upstream got traceparent %q, want the gateway's span", tps)
	}
	for k, v := range map[string]string{"moatless.decision": "allow", "moatless.policy": "istio-system/edge", "http.route": "orders",
		"http.response.status_code": "200", "client.address": "127.0.0.1", "moatless.authn.token": "none"} {
		if get.Attrs[k] != v {
			t.Errorf("allowed span %s = %q, want %q", k, get.Attrs[k], v)
		}
	}
	del := byMethod["DELETE /orders/42"]
	if del.Attrs["moatless.decision"] != "deny" || del.Attrs["moatless.policy"] != "istio-system/no-delete" ||
		del.Attrs["moatless.block_reason"] != "denied" || del.Attrs["http.response.status_code"] != "403" {
		t.Errorf("denied span %v", del.Attrs)
	}
	if a := byMethod["GET /admin"].Attrs; a["moatless.decision.reason"] != "no_allow_match" {
		t.Errorf("unmatched span %v", a)
	}
	for _, s := range spans {
		for k, v := range s.Attrs {
			if strings.Contains(v, secret) {
				t.Errorf("span attribute %s carries the secret: %q", k, v)
			}
		}
	}
}

// TestGatewayTracingRisk: a request with a verified token whose subject
// is a SPIFFE ID (a JWT-SVID's) carries that identity's risk score as the
// server pushed it; one without a token, or with a subject the server
// scored nothing for, carries 0.
func TestGatewayTracingRisk(t *testing.T) {
	rcv := otlptest.Start(t)
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.GRPCEndpoint)
	tr, err := telemetry.StartTracing(context.Background(), telemetry.TracingConfig{Enabled: true, Protocol: telemetry.ProtocolGRPC}, "edge", discard())
	if err != nil {
		t.Fatal(err)
	}
	const partner = "spiffe://" + td + "/ns/partners/sa/acme"
	risk := &telemetry.RiskScores{}
	risk.Set(wire.RiskScores{Scores: []wire.RiskScore{{SPIFFEID: partner, Score: 0.85}}})
	tg, sign := startHS256Gateway(t, func(o *Options) { o.Tracer, o.Risk = tr.Tracer("gw"), risk })
	token := func(sub string) map[string]string {
		return map[string]string{"Authorization": "Bearer " + sign(map[string]any{"sub": sub})}
	}
	for path, hdr := range map[string]map[string]string{"/orders/partner": token(partner), "/orders/alice": token("alice"), "/orders/anonymous": nil} {
		if resp, body := tg.do(t, "GET", path, nil, hdr); resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
		}
	}
	t.Cleanup(func() { tr.Shutdown(context.Background()) })
	spans := rcv.WaitFlushing(t, 10*time.Second, func(s []otlptest.Span) bool { return len(s) >= 3 }, tr.ForceFlush)
	want := map[string]string{"/orders/partner": "0.85", "/orders/alice": "0", "/orders/anonymous": "0"}
	for _, s := range spans {
		if w, ok := want[s.Attrs["url.path"]]; ok && s.Attrs["moatless.source.risk_score"] != w {
			t.Errorf("%s: risk score %q, want %q", s.Attrs["url.path"], s.Attrs["moatless.source.risk_score"], w)
		}
		delete(want, s.Attrs["url.path"])
	}
	if len(want) != 0 {
		t.Errorf("no span for %v", want)
	}
}
