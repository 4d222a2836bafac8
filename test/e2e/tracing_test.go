package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/moatless/moatless/internal/telemetry/otlptest"
)

// otelEnv points a process's OTLP exporter at rcv.
func otelEnv(service, protocol, endpoint string) []string {
	return []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL=" + protocol,
		"OTEL_SERVICE_NAME=" + service, "OTEL_BSP_SCHEDULE_DELAY=100", "OTEL_TRACES_SAMPLER=parentbased_always_on",
		"OTEL_RESOURCE_ATTRIBUTES=", "OTEL_TRACES_EXPORTER=", "OTEL_SDK_DISABLED="}
}

// TestTracingEndToEnd runs the built binary: two sidecars (OTLP over
// gRPC) and the server (OTLP over HTTP/protobuf) export to a real OTLP
// receiver on loopback; a traced request crosses the mesh and the spans
// arrive with the caller's trace, the decision and no credential.
func TestTracingEndToEnd(t *testing.T) {
	rcv := otlptest.Start(t)
	const secret = "e2e-secret-token-value"

	// The app records the traceparent it is handed.
	var mu sync.Mutex
	appSaw := map[string]string{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		appSaw[r.URL.Path] = r.Header.Get("Traceparent")
		mu.Unlock()
	})}
	go app.Serve(l)
	t.Cleanup(func() { app.Close() })

	m := startSidecarMeshEnv(t, l.Addr().String(), sidecarPolicies,
		otelEnv("orders", "grpc", rcv.GRPCEndpoint), otelEnv("frontend", "grpc", rcv.GRPCEndpoint))
	const (
		allowedTrace = "5bf92f3577b34da6a3ce929d0e0e4736"
		deniedTrace  = "6bf92f3577b34da6a3ce929d0e0e4736"
		serverTrace  = "7bf92f3577b34da6a3ce929d0e0e4736"
		callerSpan   = "00f067aa0ba902b7"
	)
	do := func(c *http.Client, method, url, trace string, hdr map[string]string) int {
		req, _ := http.NewRequest(method, url, nil)
		req.Header.Set("Traceparent", "00-"+trace+"-"+callerSpan+"-01")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	auth := map[string]string{"Authorization": "Bearer " + secret}
	if got := do(http.DefaultClient, "GET", "http://"+m.outbound+"/api/orders?access_token="+secret, allowedTrace, auth); got != 200 {
		t.Fatalf("allowed call: %d", got)
	}
	if got := do(http.DefaultClient, "DELETE", "http://"+m.outbound+"/api/admin/1", deniedTrace, auth); got != 403 {
		t.Fatalf("denied call: %d", got)
	}

	// The server, exporting over HTTP/protobuf.
	dataDir, addr := t.TempDir(), freeAddr(t)
	srv := start(t, "server", append(otelEnv("control-plane", "http/protobuf", rcv.HTTPEndpoint), "MOATLESS_DATA_DIR="+dataDir),
		"server", "--data-dir", dataDir, "--trust-domain", trustDomain, "--listen", addr)
	waitListening(t, srv, addr, dataDir)
	pool := x509.NewCertPool()
	if b, err := os.ReadFile(filepath.Join(dataDir, "bundle.pem")); err != nil || !pool.AppendCertsFromPEM(b) {
		t.Fatalf("bundle: %v", err)
	}
	tok, err := os.ReadFile(filepath.Join(dataDir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}}, Timeout: 10 * time.Second}
	if got := do(hc, "GET", "https://"+addr+"/v1/admin/audit?limit=1", serverTrace,
		map[string]string{"Authorization": "Bearer " + strings.TrimSpace(string(tok))}); got != 200 {
		t.Fatalf("admin call: %d", got)
	}

	find := func(spans []otlptest.Span, service, trace string, kind tracepb.Span_SpanKind) *otlptest.Span {
		for i := range spans {
			if s := &spans[i]; s.Service == service && s.TraceID == trace && s.Kind == kind {
				return s
			}
		}
		return nil
	}
	// The admin CLI's request is no mesh member's (no client certificate):
	// the server starts a new trace and links the caller's.
	serverSpan := func(spans []otlptest.Span) *otlptest.Span {
		for i := range spans {
			if s := &spans[i]; s.Service == "control-plane" && s.Name == "GET /v1/admin/audit" {
				return s
			}
		}
		return nil
	}
	spans := rcv.Wait(t, 30*time.Second, func(s []otlptest.Span) bool {
		return find(s, "orders", allowedTrace, tracepb.Span_SPAN_KIND_SERVER) != nil &&
			find(s, "orders", deniedTrace, tracepb.Span_SPAN_KIND_SERVER) != nil &&
			find(s, "frontend", allowedTrace, tracepb.Span_SPAN_KIND_CLIENT) != nil &&
			serverSpan(s) != nil
	})
	out := find(spans, "frontend", allowedTrace, tracepb.Span_SPAN_KIND_CLIENT)
	in := find(spans, "orders", allowedTrace, tracepb.Span_SPAN_KIND_SERVER)
	if out.ParentSpanID != callerSpan || in.ParentSpanID != out.SpanID {
		t.Errorf("parents: frontend %s (want %s), orders %s (want %s)", out.ParentSpanID, callerSpan, in.ParentSpanID, out.SpanID)
	}
	mu.Lock()
	saw := appSaw["/api/orders"]
	mu.Unlock()
	if saw != "00-"+allowedTrace+"-"+in.SpanID+"-01" {
		t.Errorf("the app got traceparent %q, want the orders sidecar's span %s", saw, in.SpanID)
	}
	for k, v := range map[string]string{"moatless.source.spiffe_id": scFrontendID, "moatless.destination.spiffe_id": scOrdersID,
		"moatless.decision": "allow", "moatless.policy": "prod/orders-allow", "moatless.authn.peer": "mtls", "url.path": "/api/orders"} {
		if in.Attrs[k] != v {
			t.Errorf("orders span %s = %q, want %q", k, in.Attrs[k], v)
		}
	}
	denied := find(spans, "orders", deniedTrace, tracepb.Span_SPAN_KIND_SERVER)
	if denied.Attrs["moatless.decision"] != "deny" || denied.Attrs["moatless.policy"] != "prod/orders-deny-admin-delete" ||
		denied.Attrs["http.response.status_code"] != "403" {
		t.Errorf("denied span %v", denied.Attrs)
	}
	sv := serverSpan(spans)
	if sv.ParentSpanID != "" || sv.TraceID == serverTrace || len(sv.Links) != 1 || sv.Links[0] != serverTrace+"-"+callerSpan ||
		sv.Kind != tracepb.Span_SPAN_KIND_SERVER || sv.Attrs["http.route"] != "/v1/admin/audit" ||
		sv.Attrs["http.response.status_code"] != "200" || sv.Resource["moatless.role"] != "moatless-server" {
		t.Errorf("server span %+v", sv)
	}
	for _, s := range spans {
		for k, v := range s.Attrs {
			if strings.Contains(v, secret) || strings.Contains(v, strings.TrimSpace(string(tok))) {
				t.Errorf("%s span %q attribute %s carries a credential", s.Service, s.Name, k)
			}
		}
	}
}

// TestTracingRiskScoreEndToEnd runs the built binary: a server and a
// sidecar in join mode exporting to a real OTLP receiver. A workload the
// policy refuses probes the sidecar; the sidecar's traffic record reaches
// the server, the probing detector raises a finding, the identity's risk
// score rises, the watch stream pushes it, and the sidecar's next span
// for a request from that identity carries the score the server reports.
func TestTracingRiskScoreEndToEnd(t *testing.T) {
	rcv := otlptest.Start(t)
	p := startPlane(t)
	api := newPlaneAPI(t, p)
	ordersID := "spiffe://" + trustDomain + "/ns/prod/sa/orders"
	prober := "spiffe://" + trustDomain + "/ns/prod/sa/reports"
	api.admin("POST", "/v1/admin/policies", map[string]any{"files": []map[string]string{{"name": "orders.yaml", "content": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-allow-frontend, namespace: prod}
spec:
  selector: {matchLabels: {app: orders}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["` + trustDomain + `/ns/prod/sa/frontend"]}}]}]
`}}}, nil)
	var tok struct {
		Token string `json:"token"`
	}
	api.admin("POST", "/v1/admin/jointokens", map[string]string{"spiffe_id": ordersID}, &tok)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(tok.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	inbound := freeAddr(t)
	startSidecarProcEnv(t, "orders-sidecar", fmt.Sprintf(`identity:
  join: {server: "%s", token_file: %s, server_bundle: %s}
namespace: prod
labels: {app: orders}
inbound:
  - {listen: "%s", app: "%s", port: 8080}
traffic: {interval: 1s}
`, p.addr, tokenFile, filepath.Join(p.dataDir, "bundle.pem"), inbound, sidecarEchoApp(t)), true, otelEnv("orders", "grpc", rcv.GRPCEndpoint))

	cert := api.attest(prober)
	tr := &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: api.pool,
		// The sidecar's SVID names a workload, not a host: check the
		// chain and the SPIFFE ID instead.
		InsecureSkipVerify: true, VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != ordersID {
				return fmt.Errorf("peer %v, want %s", leaf.URIs, ordersID)
			}
			_, err = leaf.Verify(x509.VerifyOptions{Roots: api.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			return err
		}}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	n := 0
	probe := func() string { // returns the request's trace ID
		n++
		trace := fmt.Sprintf("%032x", n)
		req, _ := http.NewRequest("GET", "https://"+inbound+"/admin/"+strconv.Itoa(n), nil)
		req.Header.Set("Traceparent", "00-"+trace+"-00f067aa0ba902b7-01")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("probe %d: %d, want 403", n, resp.StatusCode)
		}
		return trace
	}
	spanOf := func(trace string) map[string]string {
		var attrs map[string]string
		rcv.Wait(t, 30*time.Second, func(spans []otlptest.Span) bool {
			for _, s := range spans {
				if s.TraceID == trace && s.Service == "orders" {
					attrs = s.Attrs
					return true
				}
			}
			return false
		})
		return attrs
	}
	// Before any finding the identity's score is 0.
	if a := spanOf(probe()); a["moatless.source.risk_score"] != "0" || a["moatless.source.spiffe_id"] != prober || a["moatless.decision"] != "deny" {
		t.Fatalf("first probe's span: %v", a)
	}
	// 45 refusals: whichever minute boundary splits them, one minute
	// holds more than the detector's burst of 20 (a medium finding, 0.5).
	for range 44 {
		probe()
	}
	var risk struct {
		Items []struct {
			Identity string  `json:"identity"`
			Risk     float64 `json:"risk"`
		} `json:"items"`
	}
	waitFor(t, 30*time.Second, "the server to score the prober", func() bool {
		api.admin("GET", "/v1/admin/detect/risk", nil, &risk)
		return len(risk.Items) > 0 && risk.Items[0].Identity == prober
	})
	want := strconv.FormatFloat(risk.Items[0].Risk, 'g', -1, 64)
	if want != "0.5" {
		t.Fatalf("the server scored the prober %s, want 0.5 (one medium probing finding): %+v", want, risk.Items)
	}
	// The watch stream delivers the score within moments: poll with a
	// deadline, one request at a time, until a span carries it; from
	// then on every span does.
	deadline := time.Now().Add(30 * time.Second)
	for {
		a := spanOf(probe())
		if got := a["moatless.source.risk_score"]; got == want {
			break
		} else if got != "0" {
			t.Fatalf("span risk score %q: want 0 before the push, %s after", got, want)
		}
		if time.Now().After(deadline) {
			t.Fatal("no span carried the prober's risk score within 30s of the server raising it")
		}
	}
	if a := spanOf(probe()); a["moatless.source.risk_score"] != want {
		t.Errorf("the span after the push: %v", a)
	}
}
