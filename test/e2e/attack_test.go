package e2e

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"golang.org/x/net/http2/hpack"
)

// The attack tests run real sidecars in front of an app that is as
// trusting as common Python and WSGI stacks: it percent-decodes the path
// and resolves dot segments, folds "_" and "-" in header names into one
// (CGI's HTTP_X_USER; the last header wins), honours method-override
// headers and a _method query parameter, and switches to HTTP/2 on an
// "Upgrade: h2c" without insisting on the Connection header. Each attack
// is first shown to work against the app directly, so the test can fail,
// and then shown not to work through the sidecar.

const attackIssuer = "https://issuer.e2e.test"

// attackPolicies: mTLS or plaintext (PERMISSIVE); tokens from attackIssuer
// with their sub written to x-user; /internal/* denied to everyone, DELETE
// on orders denied, and only GET and POST under /api/ allowed, so /admin
// is denied by default.
func attackPolicies(jwks string) string {
	return `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: prod}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - issuer: ` + attackIssuer + `
    jwks: '` + jwks + `'
    outputClaimToHeaders: [{header: x-user, claim: sub}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-internal, namespace: prod}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/internal/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete-orders, namespace: prod}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: ["DELETE"], paths: ["/api/orders/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-api, namespace: prod}
spec:
  action: ALLOW
  rules: [{to: [{operation: {methods: ["GET", "POST"], paths: ["/api/*"]}}]}]
`
}

// lenientApp is the trusting app. It answers
//
//	method=M path=P caller=URI user=U
//
// with the method it acted on, the file path it served, the caller URI it
// read from x-forwarded-client-cert and the user from x-user, except for
// the two paths it guards: /internal/keys answers "secret-keys" and /admin
// "admin-panel".
func lenientApp(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		env := cgiEnviron(r.Header)
		method := r.Method
		if method == http.MethodPost {
			for _, k := range []string{"HTTP_X_HTTP_METHOD_OVERRIDE", "HTTP_X_HTTP_METHOD", "HTTP_X_METHOD_OVERRIDE"} {
				if v := env[k]; v != "" {
					method = v
				}
			}
			if q, err := url.ParseQuery(r.URL.RawQuery); err == nil && q.Get("_method") != "" {
				method = q.Get("_method")
			}
		}
		p := translatePath(r.RequestURI)
		switch p {
		case "/internal/keys":
			io.WriteString(w, "secret-keys")
		case "/admin":
			io.WriteString(w, "admin-panel")
		default:
			caller := ""
			for f := range strings.SplitSeq(env["HTTP_X_FORWARDED_CLIENT_CERT"], ";") {
				if v, ok := strings.CutPrefix(f, "URI="); ok {
					caller = v
				}
			}
			fmt.Fprintf(w, "method=%s path=%s caller=%s user=%s", method, p, caller, env["HTTP_X_USER"])
		}
	})
	// h2c.NewHandler switches on "Upgrade: h2c" only when Connection
	// names HTTP2-Settings and HTTP2-Settings is there, as RFC 7540 §3.2
	// says; lenient servers do not check, and neither does this one.
	h2 := h2c.NewHandler(app, &http2.Server{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if httpguts.HeaderValuesContainsToken(r.Header["Upgrade"], "h2c") {
			r.Header.Set("Connection", "Upgrade, HTTP2-Settings")
			if _, ok := r.Header["Http2-Settings"]; !ok {
				r.Header.Set("Http2-Settings", "") // defaults
			}
		}
		h2.ServeHTTP(w, r)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// cgiEnviron is CGI's and WSGI's view of request headers: HTTP_ + the name
// upper-cased with "-" turned into "_", so X-User and x_user are one
// variable; when both arrive, the one later on the wire wins, and a Go
// client writes header names in sorted order ("_" after "-").
func cgiEnviron(h http.Header) map[string]string {
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names)
	env := map[string]string{}
	for _, k := range names {
		vv := h[k]
		env["HTTP_"+strings.ToUpper(strings.ReplaceAll(k, "-", "_"))] = vv[len(vv)-1]
	}
	return env
}

// translatePath is Python's SimpleHTTPRequestHandler.translate_path: cut
// the query and fragment, percent-decode, then normalize the path (dot
// segments resolved, slashes merged).
func translatePath(target string) string {
	target, _, _ = strings.Cut(target, "?")
	target, _, _ = strings.Cut(target, "#")
	var b strings.Builder
	for i := 0; i < len(target); i++ {
		if target[i] == '%' && i+2 < len(target) {
			if v, err := strconv.ParseUint(target[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(target[i])
	}
	return path.Clean("/" + b.String())
}

// attackEnv is the lenient app behind an orders sidecar run from files,
// and a frontend sidecar whose outbound listener leads there.
type attackEnv struct {
	app, inbound, outbound string
	pki                    *sidecarPKI
	token                  string // a valid token for sub "alice"
}

func startAttackEnv(t *testing.T) *attackEnv {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	token, err := jwt.Signed(signer).Claims(jwt.Claims{Issuer: attackIssuer, Subject: "alice", Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour))}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	app := lenientApp(t)
	m := startSidecarMeshWith(t, app, attackPolicies(string(jwks)))
	return &attackEnv{app: app, inbound: m.inbound, outbound: m.outbound, pki: m.pki, token: token}
}

// attackRoutes are the ways into the orders sidecar: straight to its
// inbound listener over mTLS as frontend or in plaintext (the port is
// PERMISSIVE), and through frontend's outbound listener, as frontend's
// app would call.
func (e *attackEnv) attackRoutes(t *testing.T) []struct {
	name string
	mtls bool
	dial func() net.Conn
} {
	return []struct {
		name string
		mtls bool
		dial func() net.Conn
	}{
		{"inbound_mtls", true, func() net.Conn { return e.dial(t, e.inbound, true) }},
		{"inbound_plaintext", false, func() net.Conn { return e.dial(t, e.inbound, false) }},
		{"through_outbound", true, func() net.Conn { return e.dial(t, e.outbound, false) }},
	}
}

// dial opens a connection to addr: plaintext, or mTLS as frontend when
// mtls is set (HTTP/1.1 by ALPN).
func (e *attackEnv) dial(t *testing.T, addr string, mtls bool) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	if mtls {
		conf := tlsconfig.MTLSClientConfig(e.pki.ca.SVID(t, scFrontendID, 0).X509SVID(), e.pki.ca.Bundle(), tlsconfig.AuthorizeID(spiffeid.RequireFromString(scOrdersID)))
		conf.NextProtos = []string{"http/1.1"}
		c, err = tls.Dial("tcp", addr, conf)
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(15 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// rawRequest writes one HTTP/1.1 request exactly as given (the request
// target and header names byte for byte) and reads the answer.
func rawRequest(t *testing.T, c net.Conn, br *bufio.Reader, method, target string, headers []string) (int, string, http.Header) {
	t.Helper()
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: orders\r\n", method, target)
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	if method == http.MethodPost {
		b.WriteString("Content-Length: 0\r\n")
	}
	b.WriteString("\r\n")
	if _, err := c.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, err.Error(), nil
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return resp.StatusCode, "", resp.Header
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(body), resp.Header
}

// attack is one request that, delivered the way a defenceless proxy would
// deliver it (direct), makes the app do what policy or the sidecar's
// headers forbid (the body then contains exploited), and is sent to the
// sidecar as the attacker would send it (via).
type attack struct {
	name           string
	method         string
	via, direct    string   // request targets
	headers        []string // header lines sent to the sidecar
	directHeaders  []string // header lines the app gets when the attack works; nil: headers
	exploited      string   // in the app's answer (which ends with a newline here) when the attack works
	wantViaSidecar string   // in the sidecar's answer: the request refused or served safely
	mtlsOnly       bool     // the attack needs a verified caller
}

// TestAttacksThroughSidecar: every attack class the hostile review found
// works against the lenient app and fails through the sidecar, over mTLS
// and in plaintext on the PERMISSIVE port, and through an outbound
// listener in front of it.
func TestAttacksThroughSidecar(t *testing.T) {
	e := startAttackEnv(t)
	attacks := []attack{
		{name: "fragment_then_dot_segments_into_denied_path", method: "GET",
			via: "/api/x#/../../internal/keys", direct: "/api/x%23/../../internal/keys",
			exploited: "secret-keys", wantViaSidecar: "Bad Request"},
		{name: "fragment_then_dot_segments_past_default_deny", method: "GET",
			via: "/api/x#/../../admin", direct: "/api/x%23/../../admin",
			exploited: "admin-panel", wantViaSidecar: "Bad Request"},
		{name: "encoded_slashes_around_dot_segments_into_denied_path", method: "GET",
			via: "/api/x%2F..%2F..%2Finternal/keys", direct: "/api/x%2F..%2F..%2Finternal/keys",
			exploited: "secret-keys", wantViaSidecar: "Bad Request"},
		{name: "encoded_backslashes_around_dot_segments_past_default_deny", method: "GET",
			via: "/api/x%5c..%5c..%5cadmin", direct: "/api/x%2F..%2F..%2Fadmin",
			exploited: "admin-panel", wantViaSidecar: "Bad Request"},
		{name: "underscore_twin_of_xfcc", method: "GET", via: "/api/whoami", direct: "/api/whoami",
			headers:   []string{"X_Forwarded_Client_Cert: By=spiffe://e2e.test/forged;URI=spiffe://e2e.test/ns/prod/sa/admin"},
			exploited: "caller=spiffe://e2e.test/ns/prod/sa/admin", wantViaSidecar: "path=/api/whoami"},
		{name: "underscore_twin_of_claim_header", method: "GET", via: "/api/whoami", direct: "/api/whoami",
			headers:   []string{"x_user: admin"},
			exploited: "user=admin", wantViaSidecar: "path=/api/whoami"},
		{name: "underscore_twin_of_claim_header_next_to_a_token", method: "GET", via: "/api/whoami", direct: "/api/whoami",
			headers:   []string{"Authorization: Bearer " + e.token, "X_User: admin"},
			exploited: "user=admin", wantViaSidecar: "user=alice"},
		// The app is told nothing when a Connection header could delete
		// what the sidecar added.
		{name: "connection_nominates_xfcc", method: "GET", via: "/api/whoami", direct: "/api/whoami",
			headers:   []string{"Connection: X-Forwarded-Client-Cert"},
			exploited: "caller= ", wantViaSidecar: "caller=" + scFrontendID, mtlsOnly: true},
		{name: "connection_nominates_claim_header", method: "GET", via: "/api/whoami", direct: "/api/whoami",
			headers:   []string{"Authorization: Bearer " + e.token, "Connection: X-User"},
			exploited: "user=\n", wantViaSidecar: "user=alice"},
		{name: "connection_nominates_both_next_to_twins", method: "GET", via: "/api/whoami", direct: "/api/whoami",
			headers: []string{"Authorization: Bearer " + e.token, "Connection: X-Forwarded-Client-Cert, X-User",
				"X_Forwarded_Client_Cert: By=spiffe://e2e.test/forged;URI=spiffe://e2e.test/ns/prod/sa/admin", "X_User: admin"},
			exploited: "user=admin", wantViaSidecar: "caller=" + scFrontendID + " user=alice", mtlsOnly: true},
		// Policy allows POST and denies DELETE on orders; the app acts on
		// an overridden method.
		{name: "method_override_header", method: "POST", via: "/api/orders/1", direct: "/api/orders/1",
			headers:   []string{"X-HTTP-Method-Override: DELETE"},
			exploited: "method=DELETE", wantViaSidecar: "method=POST path=/api/orders/1"},
		{name: "method_override_header_underscored", method: "POST", via: "/api/orders/1", direct: "/api/orders/1",
			headers:   []string{"x_http_method_override: DELETE"},
			exploited: "method=DELETE", wantViaSidecar: "method=POST path=/api/orders/1"},
		{name: "x_http_method_header", method: "POST", via: "/api/orders/1", direct: "/api/orders/1",
			headers:   []string{"X-HTTP-Method: DELETE"},
			exploited: "method=DELETE", wantViaSidecar: "method=POST path=/api/orders/1"},
		{name: "x_method_override_header", method: "POST", via: "/api/orders/1", direct: "/api/orders/1",
			headers:   []string{"X-Method-Override: DELETE"},
			exploited: "method=DELETE", wantViaSidecar: "method=POST path=/api/orders/1"},
		{name: "method_override_query_parameter", method: "POST", via: "/api/orders/1?_method=DELETE", direct: "/api/orders/1?_method=DELETE",
			exploited: "method=DELETE", wantViaSidecar: "method=POST path=/api/orders/1"},
		{name: "method_override_query_parameter_escaped", method: "POST", via: "/api/orders/1?a=1&%5Fmethod=DELETE", direct: "/api/orders/1?a=1&%5Fmethod=DELETE",
			exploited: "method=DELETE", wantViaSidecar: "method=POST path=/api/orders/1"},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			directHeaders := a.directHeaders
			if directHeaders == nil {
				directHeaders = a.headers
			}
			c := e.dial(t, e.app, false)
			code, body, _ := rawRequest(t, c, bufio.NewReader(c), a.method, a.direct, directHeaders)
			if code != 200 || !strings.Contains(body+"\n", a.exploited) {
				t.Fatalf("against the app directly: %d %q; the attack should work there (%q)", code, body, a.exploited)
			}
			for _, r := range e.attackRoutes(t) {
				if a.mtlsOnly && !r.mtls {
					continue
				}
				c := r.dial()
				code, body, _ := rawRequest(t, c, bufio.NewReader(c), a.method, a.via, a.headers)
				if strings.Contains(body+"\n", a.exploited) || !strings.Contains(body, a.wantViaSidecar) {
					t.Errorf("%s: %d %q; want %q and not %q", r.name, code, body, a.wantViaSidecar, a.exploited)
				}
			}
		})
	}
}

// h2cRequest asks, on c, for GET /api/x with an upgrade to h2c. When the
// answer is 101, it speaks HTTP/2 on the connection and asks for
// /internal/keys as a second stream, which no policy sees; it returns the
// status of the first answer and the body of the tunnelled one.
func h2cRequest(t *testing.T, c net.Conn) (int, string) {
	t.Helper()
	br := bufio.NewReader(c)
	code, body, _ := rawRequest(t, c, br, "GET", "/api/x", []string{"Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA"})
	if code != http.StatusSwitchingProtocols {
		return code, body
	}
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "orders"}, {":path", "/internal/keys"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	var tunnelled bytes.Buffer
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return code, "tunnel: " + err.Error()
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.DataFrame:
			if f.StreamID == 3 {
				tunnelled.Write(f.Data())
				if f.StreamEnded() {
					return code, tunnelled.String()
				}
			}
		case *http2.GoAwayFrame:
			return code, "tunnel: goaway"
		}
	}
}

// TestH2CUpgradeThroughSidecar: the lenient app turns an "Upgrade: h2c"
// into an HTTP/2 tunnel in which /internal/keys is one request away, past
// any policy; through the sidecar the request is served as plain
// HTTP/1.1 and no tunnel opens.
func TestH2CUpgradeThroughSidecar(t *testing.T) {
	e := startAttackEnv(t)
	if code, body := h2cRequest(t, e.dial(t, e.app, false)); code != http.StatusSwitchingProtocols || body != "secret-keys" {
		t.Fatalf("against the app directly: %d %q; the tunnel should open there", code, body)
	}
	for _, r := range e.attackRoutes(t) {
		code, body := h2cRequest(t, r.dial())
		if code != 200 || !strings.Contains(body, "path=/api/x") {
			t.Errorf("%s: %d %q; want 200 from the app, no switch", r.name, code, body)
		}
	}
}
