package token_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

// BenchmarkClientCredentials is token issuance end to end through the
// handler: form parsing, client authentication against the SQLite store,
// claims, ES256 signature, JSON answer.
func BenchmarkClientCredentials(b *testing.B) {
	for _, alg := range []string{"ES256", "EdDSA", "RS256"} {
		b.Run(alg, func(b *testing.B) {
			db := storetest.SQLite(b)
			svc, err := token.New(token.Config{Issuer: "https://as.example", Store: db.OAuth(), KEK: bytes.Repeat([]byte{1}, 32), SigningAlg: alg})
			if err != nil {
				b.Fatal(err)
			}
			ans, err := svc.CreateClient(context.Background(), token.ClientRequest{Name: "svc", ClientSpec: token.ClientSpec{
				GrantTypes: []string{"client_credentials"}, Scopes: []string{"read"}, Audiences: []string{"payments"}}})
			if err != nil {
				b.Fatal(err)
			}
			h := svc.Handler()
			const body = "grant_type=client_credentials&scope=read&audience=payments"
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req := httptest.NewRequest("POST", "https://as.example/oauth2/token", strings.NewReader(body))
					req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
					req.SetBasicAuth("svc", ans.Secret)
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, req)
					if rec.Code != http.StatusOK {
						b.Fatalf("%d %s", rec.Code, rec.Body)
					}
				}
			})
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the process's user + system CPU time. Benchmarks report it
// per operation (cpu-ns/op): on a shared machine wall time mostly
// measures waiting for a core.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRefreshGrant is a refresh end to end through the handler on
// SQLite with the real audit log, as the server wires it: the grant read
// under its lock, the rotation, the access token's ID recorded under the
// grant and the audit record, in one transaction (one fsync per refresh;
// client_credentials, which changes nothing, is recorded by group commit
// instead). Sequential: each refresh presents the token the last one
// returned.
func BenchmarkRefreshGrant(b *testing.B) {
	db := storetest.SQLite(b)
	sink := audit.NewStoreSink(db)
	svc, err := token.New(token.Config{Issuer: "https://as.example", Store: db.OAuth(), KEK: bytes.Repeat([]byte{1}, 32),
		Audit: func(ctx context.Context, e token.AuditEvent) error {
			ev := audit.Event{Kind: e.Type, Actor: e.ClientID, Subject: e.Subject, Outcome: e.Outcome, Details: e.Details}
			if tx, ok := store.TxFrom(ctx); ok {
				return sink.AppendTx(ctx, tx, ev)
			}
			return sink.Append(ctx, ev)
		}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	ans, err := svc.CreateClient(ctx, token.ClientRequest{Name: "web", ClientSpec: token.ClientSpec{
		GrantTypes: []string{"authorization_code", "refresh_token"}, RedirectURIs: []string{"https://app.example/cb"}, Scopes: []string{"openid"}}})
	if err != nil {
		b.Fatal(err)
	}
	u, err := svc.CreateUser(ctx, token.UserRequest{Name: "bea", Password: "bea's long password"})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	g := &token.Grant{ID: "g1", ClientID: "web", UserID: u.ID, Scope: []string{"openid"}, AuthTime: now, AMR: []string{"pwd"},
		CreatedAt: now, ExpiresAt: now.Add(24 * time.Hour)}
	rt := "mlr_benchmark-refresh-token"
	sum := sha256.Sum256([]byte(rt))
	if err := db.OAuth().AddGrant(ctx, g); err != nil {
		b.Fatal(err)
	}
	if err := db.OAuth().AddRefreshToken(ctx, &token.RefreshToken{Hash: sum[:], GrantID: g.ID, ClientID: "web", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		b.Fatal(err)
	}
	h := svc.Handler()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		req := httptest.NewRequest("POST", "https://as.example/oauth2/token", strings.NewReader("grant_type=refresh_token&refresh_token="+rt))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("web", ans.Secret)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var out struct {
			RefreshToken string `json:"refresh_token"`
		}
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &out) != nil || out.RefreshToken == "" {
			b.Fatalf("%d %s", rec.Code, rec.Body)
		}
		rt = out.RefreshToken
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}
