package extauthz

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// TestRevocationsRefused: with the mesh's revocations (Config.Revocations
// and the verifier's Revoked), ext_authz refuses what a sidecar refuses
// — a revoked source principal (denied: Envoy took its certificate,
// which it cannot know is revoked), a token whose jti is revoked, and a
// token issued to or for a revoked workload (401) — and lets the rest
// through. Before, an Envoy behind "moatless server --ext-authz" kept
// allowing a revoked workload's calls and tokens until they expired.
func TestRevocationsRefused(t *testing.T) {
	const (
		ingress = "spiffe://example.org/ns/istio-system/sa/ingress" // check()'s source
		web     = "spiffe://example.org/ns/prod/sa/web"
		other   = "spiffe://example.org/ns/prod/sa/other"
	)
	revs := &proxy.Revocations{}
	var recs []Record
	s, sign := issuerServer(t, authn.Options{Revoked: revs.Token}, func(c *Config) {
		c.Revocations = revs
		c.OnDecision = func(_ context.Context, r Record) { recs = append(recs, r) }
	})
	now := time.Now()
	tok := func(claims map[string]any) string {
		claims["iss"], claims["exp"] = "https://idp.example", now.Add(time.Hour).Unix()
		return sign(claims)
	}
	cases := []struct {
		name   string
		source string
		token  string
		code   codes.Code
		reason string
	}{
		{"no_token", ingress, "", codes.OK, ""},
		{"source_revoked", web, "", codes.PermissionDenied, ReasonSourceRevoked},
		{"source_revoked_with_a_good_token", web, tok(map[string]any{"sub": "alice"}), codes.PermissionDenied, ReasonSourceRevoked},
		{"token_jti_revoked", ingress, tok(map[string]any{"sub": "alice", "jti": "j-revoked"}), codes.Unauthenticated, "revoked"},
		{"token_jti_other", ingress, tok(map[string]any{"sub": "alice", "jti": "j-other"}), codes.OK, ""},
		{"token_subject_revoked", ingress, tok(map[string]any{"sub": web}), codes.Unauthenticated, ReasonTokenOfRevokedIdentity},
		{"token_azp_revoked", ingress, tok(map[string]any{"sub": "alice", "azp": web}), codes.Unauthenticated, ReasonTokenOfRevokedIdentity},
		{"token_actor_revoked", ingress, tok(map[string]any{"sub": "alice", "act": map[string]any{"sub": other, "act": map[string]any{"sub": web}}}), codes.Unauthenticated, ReasonTokenOfRevokedIdentity},
		{"token_subject_other", ingress, tok(map[string]any{"sub": other}), codes.OK, ""},
	}
	revs.Set(&wire.Revocations{SPIFFEIDs: []string{web}, TokenIDs: []wire.RevokedTokenID{{JTI: "j-revoked", ExpiresAt: now.Add(time.Hour)}}})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			recs = nil
			headers := map[string]string{}
			if c.token != "" {
				headers["authorization"] = "Bearer " + c.token
			}
			req := check("GET", "/", headers, "app=x", now)
			req.Attributes.Source.Principal = c.source
			resp, err := s.Check(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if got := codes.Code(resp.GetStatus().GetCode()); got != c.code {
				t.Fatalf("status %v (%s), want %v", got, resp.GetStatus().GetMessage(), c.code)
			}
			if c.code == codes.OK {
				return
			}
			if len(recs) != 1 || !strings.Contains(recs[0].Decision.Reason, c.reason) {
				t.Fatalf("records %+v, want one with reason %q", recs, c.reason)
			}
			if c.reason == ReasonTokenOfRevokedIdentity && recs[0].TokenIssuer != "https://idp.example" {
				t.Errorf("a verified token's refusal names issuer %q", recs[0].TokenIssuer)
			}
		})
	}
}

// TestRevokedSerialRefused: a certificate revoked by its serial number
// (a node attested again with replace, or an admin's revoke of one
// certificate) while its SPIFFE ID is not, reported by Envoy as the peer
// certificate (include_peer_certificate), is refused as a sidecar refuses
// it at the handshake; before, ext_authz checked the ID alone.
func TestRevokedSerialRefused(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	const id = "spiffe://example.org/ns/prod/sa/web"
	revoked, kept := ca.SVID(t, id, 0).Chain[0], ca.SVID(t, id, 0).Chain[0]
	revs := &proxy.Revocations{}
	revs.Set(&wire.Revocations{Serials: []wire.RevokedSerial{{Serial: revoked.SerialNumber.Text(16), ExpiresAt: time.Now().Add(time.Hour)}}})
	s, _ := issuerServer(t, authn.Options{}, func(c *Config) { c.Revocations = revs })
	now := time.Now()
	for _, c := range []struct {
		name string
		cert string
		code codes.Code
	}{
		{"revoked_serial", envoyCertificate(revoked.Raw), codes.PermissionDenied},
		{"other_serial", envoyCertificate(kept.Raw), codes.OK},
		{"no_certificate", "", codes.OK},
		{"not_a_certificate", envoyCertificate([]byte("garbage")), codes.OK},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := check("GET", "/", nil, "app=x", now)
			req.Attributes.Source.Principal, req.Attributes.Source.Certificate = id, c.cert
			resp, err := s.Check(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if got := codes.Code(resp.GetStatus().GetCode()); got != c.code {
				t.Fatalf("status %v (%s), want %v", got, resp.GetStatus().GetMessage(), c.code)
			}
		})
	}
}
