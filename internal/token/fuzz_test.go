package token_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

// fuzzService is a service on a real SQLite store with one confidential
// client ("fz", secret returned) allowed every grant.
func fuzzService(f *testing.F) (*token.Service, string) {
	db := storetest.SQLite(f)
	svc, err := token.New(token.Config{Issuer: "https://as.example", Store: db.OAuth(), KEK: bytes.Repeat([]byte{1}, 32), Argon2: testArgon2})
	if err != nil {
		f.Fatal(err)
	}
	ans, err := svc.CreateClient(context.Background(), token.ClientRequest{Name: "fz", ClientSpec: token.ClientSpec{
		GrantTypes:   []string{"client_credentials", "authorization_code", "refresh_token", token.GrantTokenExchange},
		RedirectURIs: []string{"https://app.example/cb"}, Scopes: []string{"openid", "a"}, Audiences: []string{"x"},
		ExchangeAudiences: []string{"y"}}})
	if err != nil {
		f.Fatal(err)
	}
	return svc, ans.Secret
}

// FuzzTokenRequest sends arbitrary form bodies to the token endpoint of a
// real service: every answer is 200 with a token (only for the
// authenticated client, within its scopes) or an RFC 6749 §5.2 error
// object with a 400/401 status, never a 5xx or a panic.
func FuzzTokenRequest(f *testing.F) {
	svc, secret := fuzzService(f)
	for _, s := range []string{
		"grant_type=client_credentials",
		"grant_type=client_credentials&scope=a&audience=x",
		"grant_type=client_credentials&audience=x&audience=z",
		"grant_type=authorization_code&code=mlc_x&redirect_uri=https%3A%2F%2Fapp.example%2Fcb&code_verifier=" + strings.Repeat("a", 43),
		"grant_type=refresh_token&refresh_token=mlr_x",
		"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=a.b.c&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&audience=y",
		"grant_type=client_credentials&grant_type=x",
		"grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=e30.e30.",
	} {
		f.Add(s, true)
		f.Add(s, false)
	}
	h := svc.Handler()
	f.Fuzz(func(t *testing.T, body string, basic bool) {
		req := httptest.NewRequest("POST", "https://as.example/oauth2/token", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if basic {
			req.SetBasicAuth("fz", secret)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var out map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatalf("answer is not JSON: %d %q", rec.Code, rec.Body.String())
		}
		switch rec.Code {
		case http.StatusOK:
			if out["access_token"] == nil || out["token_type"] != "Bearer" {
				t.Fatalf("200 without a token: %v", out)
			}
			// The fuzzer knows no secret and can sign no assertion: a
			// token needs the client's Basic credentials, and carries no
			// scope the client was not registered for.
			if !basic {
				t.Fatalf("token issued without client authentication: %q", body)
			}
			if sc, _ := out["scope"].(string); sc != "" {
				for s := range strings.FieldsSeq(sc) {
					if s != "openid" && s != "a" {
						t.Fatalf("token with scope %q the client was not registered for: %q", s, body)
					}
				}
			}
		case http.StatusBadRequest, http.StatusUnauthorized:
			if code, _ := out["error"].(string); code == "" || out["access_token"] != nil {
				t.Fatalf("%d without an error code: %v", rec.Code, out)
			}
		default:
			t.Fatalf("status %d: %v", rec.Code, out)
		}
		if rec.Header().Get("Cache-Control") != "no-store" {
			t.Fatal("token endpoint answer cacheable")
		}
	})
}

// FuzzAuthorizeRequest sends arbitrary query strings to the authorization
// endpoint: it never redirects anywhere but the registered redirect URI,
// and never issues a code without a login.
func FuzzAuthorizeRequest(f *testing.F) {
	svc, _ := fuzzService(f)
	for _, s := range []string{
		"response_type=code&client_id=fz&redirect_uri=https%3A%2F%2Fapp.example%2Fcb&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&state=x",
		"response_type=code&client_id=fz&redirect_uri=https%3A%2F%2Fevil.example%2Fcb",
		"response_type=token&client_id=fz&redirect_uri=https%3A%2F%2Fapp.example%2Fcb",
		"client_id=fz&redirect_uri=https%3A%2F%2Fapp.example%2Fcb&redirect_uri=https%3A%2F%2Fevil.example",
		"client_id=fz&redirect_uri=https%3A%2F%2Fapp.example%2Fcb%23frag",
	} {
		f.Add(s)
	}
	h := svc.Handler()
	f.Fuzz(func(t *testing.T, query string) {
		req := httptest.NewRequest("GET", "https://as.example/oauth2/authorize", nil)
		req.URL.RawQuery = query
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusSeeOther:
			loc := rec.Header().Get("Location")
			if !strings.HasPrefix(loc, "https://app.example/cb?") {
				t.Fatalf("redirected to %q", loc)
			}
			if strings.Contains(loc, "code=") {
				t.Fatalf("code issued without login: %q", loc)
			}
		case http.StatusOK, http.StatusBadRequest, http.StatusRequestURITooLong:
			if rec.Header().Get("Location") != "" {
				t.Fatal("Location on a non-redirect")
			}
		default:
			t.Fatalf("status %d", rec.Code)
		}
	})
}
