package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/opaapi/opaclient"
	"github.com/moatless/moatless/internal/policy/policytest"
)

// regoIssuer is an ES256 token issuer: its JWKS and a signer of tokens
// for sub with roles, valid for an hour.
func regoIssuer(t *testing.T) (string, func(sub string, roles ...string) string) {
	t.Helper()
	jwks, sign := policytest.Issuer(t)
	return jwks, func(sub string, roles ...string) string {
		now := time.Now()
		return sign(map[string]any{"iss": "https://idp.e2e", "sub": sub, "roles": roles, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
	}
}

// ownershipPolicies writes the ownership policy of the Rego examples, its
// data, a provider for /documents/{doc} and the CUSTOM policy for
// app=documents in prod, trusting tokens of jwks, into a new directory.
func ownershipPolicies(t *testing.T, jwks string) string {
	t.Helper()
	dir := t.TempDir()
	policytest.CopyRego(t, dir, "ownership.rego", "data.json")
	writeTestFile(t, dir, "policies.yaml", ownershipPolicyYAML(jwks, "documents", "[{}]"))
	return dir
}

// ownershipPolicyYAML trusts tokens of jwks and puts the requests of app
// in prod that rules match under the ownership policy of the Rego
// examples: a RegoProvider for /documents/{doc} and a CUSTOM policy.
func ownershipPolicyYAML(jwks, app, rules string) string {
	return fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - issuer: https://idp.e2e
    jwks: '%s'
---
apiVersion: moatless.io/v1
kind: RegoProvider
metadata: {name: ownership}
spec:
  query: data.ownership.decision
  routes:
  - path: "/documents/{doc}"
    methods: [GET]
    attributes:
      doc: {segment: doc}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: documents-owner, namespace: prod}
spec:
  selector: {matchLabels: {app: %s}}
  action: CUSTOM
  provider: {name: ownership}
  rules: %s
`, jwks, app, rules)
}

// TestSidecarRego: Rego through the real binaries. The ownership policy
// and its data are applied on the server; the callee's sidecar (join
// mode) decides with them on real JWTs; a data update written through
// OPA's Data API on the server (by a client written from OPA's docs)
// reaches the running sidecar and changes its next decision; a module
// that does not compile is refused at apply with OPA's error and line
// while the version in force keeps serving; the sidecar's admin listener
// answers the same client read-only.
func TestSidecarRego(t *testing.T) {
	p := startPlane(t)
	bundle := filepath.Join(p.dataDir, "bundle.pem")
	jwks, token := regoIssuer(t)
	app := sidecarEchoApp(t)
	inbound, outbound := freeAddr(t), freeAddr(t)
	docs := startSidecarProc(t, "documents-sidecar", fmt.Sprintf(`identity:
  join: {server: "%s", token_file: %s, server_bundle: %s}
namespace: prod
labels: {app: documents}
inbound:
  - {listen: "%s", app: "%s", port: 8080}
`, p.addr, p.joinTokenFile(scOrdersID), bundle, inbound, app), false)
	startSidecarProc(t, "frontend-sidecar", fmt.Sprintf(`identity:
  join: {server: "%s", token_file: %s, server_bundle: %s}
outbound:
  - {listen: "%s", upstream: "%s", spiffe_id: "%s"}
`, p.addr, p.joinTokenFile(scFrontendID), bundle, outbound, inbound, scOrdersID), false)

	dir := ownershipPolicies(t, jwks)
	out := p.admin("policy", "apply", "-f", dir)
	if !strings.Contains(out, "create RegoModule ownership.rego") || !strings.Contains(out, "create RegoData documents") {
		t.Fatalf("apply: %s", out)
	}

	call := func(sub string, roles ...string) int {
		req, _ := http.NewRequest("GET", "http://"+outbound+"/documents/d1", nil)
		req.Header.Set("Authorization", "Bearer "+token(sub, roles...))
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitFor(t, 30*time.Second, "the owner of d1 allowed through the joined pair", func() bool { return call("alice") == 200 })
	if code := call("bob"); code != 404 {
		t.Fatalf("non-owner: %d, want the policy's 404", code)
	}

	// A data update through OPA's Data API on the server (admin token as
	// OPA's bearer token) reaches the running sidecar.
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(pem)
	adminToken, err := os.ReadFile(filepath.Join(p.dataDir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	server := &opaclient.Client{Base: "https://" + p.addr, Token: strings.TrimSpace(string(adminToken)),
		HTTP: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}}}}
	ctx := context.Background()
	if err := server.PutData(ctx, "documents/d1", map[string]any{"owner": "bob"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the data update to change the sidecar's decision", func() bool { return call("bob") == 200 })
	if code := call("alice"); code != 404 {
		t.Fatalf("former owner: %d", code)
	}

	// A module that does not compile is refused with OPA's error and
	// line; the version in force keeps serving.
	broken := writeTestFile(t, t.TempDir(), "ownership.rego", "package ownership\n\nimport rego.v1\n\ndecision := {\"allow\": true} if {\n\tinput.x ==\n}\n")
	code, _, stderr := run(t, p.env, "", "policy", "apply", "-f", broken)
	if code != 2 || !strings.Contains(stderr, "ownership.rego:7") || !strings.Contains(stderr, "rego_parse_error") {
		t.Fatalf("broken module: exit %d: %s", code, stderr)
	}
	var oe *opaclient.Error
	if err := server.PutPolicy(ctx, "ownership.rego", "package ownership\ndecision := {\n"); !errors.As(err, &oe) || oe.Status != 400 || len(oe.Errors) == 0 || oe.Errors[0].Location == nil {
		t.Fatalf("broken module through the Policy API: %v", err)
	}
	if code := call("bob"); code != 200 {
		t.Fatalf("after the refused module: %d", code)
	}

	// The sidecar's admin listener answers the OPA client, read-only.
	side := &opaclient.Client{Base: "http://" + docs.admin}
	res, ok, err := side.Query(ctx, "ownership/decision", map[string]any{"attributes": map[string]any{"doc": "d1"}, "auth": map[string]any{"claims": map[string]any{"sub": "bob"}}})
	if err != nil || !ok || res.(map[string]any)["allow"] != true {
		t.Fatalf("sidecar Data API: %v %v %v", res, ok, err)
	}
	if ps, err := side.ListPolicies(ctx); err != nil || len(ps) != 1 || ps[0].ID != "ownership.rego" {
		t.Fatalf("sidecar Policy API: %+v %v", ps, err)
	}
	if err := side.PutData(ctx, "documents/d1", map[string]any{"owner": "mallory"}); !errors.As(err, &oe) || oe.Status != 405 {
		t.Fatalf("sidecar write: %v", err)
	}
	// Each CUSTOM decision is in the callee's decision log with its input
	// digest, never the token.
	log := docs.out.String()
	if !strings.Contains(log, `"query":"data.ownership.decision"`) || !strings.Contains(log, `"input_sha256":"`) || strings.Contains(log, "eyJ") {
		t.Fatalf("decision log:\n%s", log)
	}
}

func writeTestFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
