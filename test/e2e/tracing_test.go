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

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	inbound := freeAddr(t)
	startSidecarProcEnv(t, "orders-sidecar", fmt.Sprintf(`identity:
  join: {server: "%s", token_file: %s, server_bundle: %s}
namespace: prod
labels: {app: orders}
inbound:
  - {listen: "%s", app: "%s", port: 8080}
traffic: {interval: 1s}
`, p.addr, p.joinTokenFile(ordersID), filepath.Join(p.dataDir, "bundle.pem"), inbound, sidecarEchoApp(t)), true, otelEnv("orders", "grpc", rcv.GRPCEndpoint))

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

// TestTracingWorkloadAPI runs the built server and agent, the agent
// exporting over OTLP HTTP/protobuf to a real receiver; go-spiffe's
// standard client calls every Workload API method. Each call, and each
// answer of a stream, is a span with the attestation result, the
// selectors counted, the SPIFFE IDs served and the gRPC status; no key,
// SVID or token is in any of them.
func TestTracingWorkloadAPI(t *testing.T) {
	rcv := otlptest.Start(t)
	p := startPlane(t)
	a := p.startAgent(p.joinToken(agentID), t.TempDir(), otelEnv("node-agent", "http/protobuf", rcv.HTTPEndpoint)...)
	c := a.client(t)
	const web = "spiffe://" + trustDomain + "/ns/shop/sa/web"

	// No entry yet: attested, but no identity.
	if _, err := c.FetchX509Context(deadline(t, 10*time.Second)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("no entry: %v", err)
	}
	p.admin("entry", "create", "--parent", agentID, "--spiffe-id", web, "--selector", uidSelector())
	fetchX509(t, c)
	tok, err := c.FetchJWTSVID(deadline(t, 10*time.Second), jwtsvid.Params{Audience: "orders", ExtraAudiences: []string{"payments"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.FetchJWTBundles(deadline(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ValidateJWTSVID(deadline(t, 10*time.Second), tok.Marshal(), "orders"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ValidateJWTSVID(deadline(t, 10*time.Second), tok.Marshal(), "billing"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("wrong audience: %v", err)
	}
	// A watch: its first answer, then the revocation ending it, are two
	// spans of one stream.
	w := x509Updates{make(chan *workloadapi.X509Context, 16), make(chan error, 16)}
	ctx := deadline(t, 30*time.Second)
	go c.WatchX509Context(ctx, w)
	select {
	case <-w.updates:
	case <-ctx.Done():
		t.Fatal("no first answer on the watch")
	}
	p.admin("revoke", "--spiffe-id", web)
	for done := false; !done; {
		select {
		case err := <-w.errs:
			done = status.Code(err) == codes.PermissionDenied
		case <-w.updates:
		case <-ctx.Done():
			t.Fatal("the revocation did not end the watch")
		}
	}

	type want struct {
		method string
		attrs  map[string]string
	}
	uid := strconv.Itoa(os.Geteuid())
	ok := func(extra map[string]string) map[string]string {
		m := map[string]string{"rpc.system": "grpc", "rpc.service": "SpiffeWorkloadAPI", "moatless.workload.attestation": "success",
			"moatless.workload.caller.uid": uid, "moatless.workload.caller.pid": strconv.Itoa(os.Getpid()), "moatless.workload.selectors": ""}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	wants := []want{
		{"FetchX509SVID", ok(map[string]string{"rpc.grpc.status_code": "7", "moatless.workload.stream.update": "0"})},
		{"FetchX509SVID", ok(map[string]string{"rpc.grpc.status_code": "0", "moatless.workload.stream.update": "0", "moatless.workload.spiffe_ids": "[" + web + "]",
			"moatless.workload.risk_score": "0"})},
		{"FetchJWTSVID", ok(map[string]string{"rpc.grpc.status_code": "0", "moatless.workload.spiffe_ids": "[" + web + "]", "moatless.workload.jwt.audiences": "2",
			"moatless.workload.risk_score": "0"})},
		{"FetchJWTBundles", ok(map[string]string{"rpc.grpc.status_code": "0", "moatless.workload.trust_domain": trustDomain})},
		{"ValidateJWTSVID", ok(map[string]string{"rpc.grpc.status_code": "0", "moatless.workload.jwt.valid": "true", "moatless.workload.spiffe_ids": "[" + web + "]",
			"moatless.workload.risk_score": "0"})},
		{"ValidateJWTSVID", ok(map[string]string{"rpc.grpc.status_code": "3", "moatless.workload.jwt.valid": "false"})},
		{"FetchX509SVID", ok(map[string]string{"rpc.grpc.status_code": "7", "moatless.workload.stream.update": "1"})},
	}
	matches := func(s otlptest.Span, w want) bool {
		if s.Name != "SpiffeWorkloadAPI/"+w.method || s.Service != "node-agent" {
			return false
		}
		for k, v := range w.attrs {
			got, has := s.Attrs[k]
			if !has || (v != "" && got != v) {
				return false
			}
		}
		return true
	}
	missing := func(spans []otlptest.Span) []want {
		var out []want
	next:
		for _, w := range wants {
			for _, s := range spans {
				if matches(s, w) {
					continue next
				}
			}
			out = append(out, w)
		}
		return out
	}
	spans := rcv.Wait(t, 30*time.Second, func(s []otlptest.Span) bool { return len(missing(s)) == 0 })
	jwtParts := strings.Split(tok.Marshal(), ".")
	for _, s := range spans {
		if s.Kind != tracepb.Span_SPAN_KIND_SERVER || s.ParentSpanID != "" || s.Resource["moatless.role"] != "moatless-agent" {
			t.Errorf("span %s: kind %v, parent %q, role %q", s.Name, s.Kind, s.ParentSpanID, s.Resource["moatless.role"])
		}
		if s.Attrs["rpc.grpc.status_code"] != "0" && s.StatusCode != tracepb.Status_STATUS_CODE_ERROR {
			t.Errorf("span %s with status %s is not in error", s.Name, s.Attrs["rpc.grpc.status_code"])
		}
		for k, v := range s.Attrs {
			for _, part := range jwtParts {
				if strings.Contains(v, part) {
					t.Errorf("span %s attribute %s carries part of the JWT-SVID", s.Name, k)
				}
			}
			if strings.Contains(v, "eyJ") || strings.Contains(v, "BEGIN") || strings.Contains(v, "unix:") {
				t.Errorf("span %s attribute %s = %q: a token, a PEM block or a selector", s.Name, k, v)
			}
		}
	}
}
