package gateway

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestGatewayEdgeTokens: what a caller can do with the token it sends
// (RequestAuthentication at the edge, an HS256 issuer, a policy allowing
// alice only). alg none, expiry and nbf beyond the 60 s skew, a missing
// exp, audiences and issuers of the wrong shape, several tokens (in the
// header and the query, or the query twice) are 401s; a verified token
// never reaches the app (header or query), and the claim header is the
// token's, never the caller's.
func TestGatewayEdgeTokens(t *testing.T) {
	const issuer = hs256Issuer
	tg, sign := startHS256Gateway(t)
	tg.g.SetAuthorizer(3, compile(t, hs256EdgePolicy(issuer, "alice")))
	now := time.Now()
	tok := func(claims map[string]any) string {
		all := map[string]any{"sub": "alice", "aud": "orders"}
		for k, v := range claims {
			all[k] = v
		}
		return sign(all)
	}
	none := func() string {
		h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
		p, _ := json.Marshal(map[string]any{"iss": issuer, "sub": "alice", "aud": "orders", "exp": now.Add(time.Hour).Unix()})
		return h + "." + base64.RawURLEncoding.EncodeToString(p) + "."
	}
	tests := []struct {
		name, path, authz string
		want              string
	}{
		{"ok", "/orders/1", "Bearer " + tok(nil), "200"},
		{"none", "/orders/1", "Bearer " + none(), "401"},
		{"expired_30s", "/orders/1", "Bearer " + tok(map[string]any{"exp": now.Add(-30 * time.Second).Unix()}), "200"},
		{"expired_2m", "/orders/1", "Bearer " + tok(map[string]any{"exp": now.Add(-2 * time.Minute).Unix()}), "401"},
		{"nbf_30s", "/orders/1", "Bearer " + tok(map[string]any{"nbf": now.Add(30 * time.Second).Unix()}), "200"},
		{"nbf_2m", "/orders/1", "Bearer " + tok(map[string]any{"nbf": now.Add(2 * time.Minute).Unix()}), "401"},
		{"no_exp", "/orders/1", "Bearer " + tok(map[string]any{"exp": nil}), "401"},
		{"aud_array_ok", "/orders/1", "Bearer " + tok(map[string]any{"aud": []string{"x", "orders"}}), "200"},
		{"aud_array_bad", "/orders/1", "Bearer " + tok(map[string]any{"aud": []string{"x"}}), "401"},
		{"iss_array", "/orders/1", "Bearer " + tok(map[string]any{"iss": []string{issuer}}), "401"},
		{"sub_crlf", "/orders/1", "Bearer " + tok(map[string]any{"sub": "alice\r\nX-Admin: 1"}), "403"},
		{"sub_array", "/orders/1", "Bearer " + tok(map[string]any{"sub": []string{"alice"}}), "401"},
		{"header_and_query_other", "/orders/1?access_token=" + tok(map[string]any{"sub": "bob"}), "Bearer " + tok(nil), "401"},
		{"header_and_query_garbage", "/orders/1?access_token=garbage", "Bearer " + tok(nil), "401"},
		{"query_only", "/orders/1?access_token=" + tok(nil), "", "200"},
		{"query_twice", "/orders/1?access_token=" + tok(nil) + "&access_token=" + tok(map[string]any{"sub": "bob"}), "", "401"},
		{"query_encoded_name", "/orders/1?access%5Ftoken=" + tok(nil), "", "200"},
		{"bearer_lower_spaces", "/orders/1", "bearer   " + tok(nil), "200"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := ""
			if tt.authz != "" {
				h = "Authorization: " + tt.authz + "\r\n"
			}
			got := tg.raw(t, "GET "+tt.path+" HTTP/1.1\r\nHost: localhost\r\nX-User: mallory\r\nX_User: mallory\r\n"+h+"Connection: close\r\n\r\n")
			if !strings.HasPrefix(got, "HTTP/1.1 "+tt.want+" ") {
				t.Fatalf("answer %q, want %s", firstLine(got), tt.want)
			}
			if tt.want != "200" {
				return
			}
			s := decodeSeen(t, []byte(got[strings.Index(got, "\r\n\r\n")+4:]))
			if s.Query != "" || len(s.Headers["Authorization"]) != 0 {
				t.Errorf("the token reached the app: query %q, Authorization %v", s.Query, s.Headers["Authorization"])
			}
			if u := s.Headers["X-User"]; len(u) != 1 || u[0] != "alice" {
				t.Errorf("X-User %v, want [alice] from the token", u)
			}
		})
	}
}
