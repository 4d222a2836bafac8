package secrets

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/store/storetest"
)

// bigBodies are near-MaxBody writes by an authenticated writer: many
// tiny values (each costs an interface, a slice slot and more once
// decoded into map[string]any), or one long string (costs its bytes).
func bigBodies(member string) map[string]string {
	n := (MaxBody - 200) / 2
	return map[string]string{
		"many_values": `{"` + member + `":{"a":[` + strings.Repeat("0,", n-1) + `0]}}`,
		"one_string":  `{"` + member + `":{"a":"` + strings.Repeat("x", 2*n-100) + `"}}`,
	}
}

// BenchmarkBigBody reports what one near-2 MiB KV write or fieldcrypt
// document costs the server in allocations (B/op), from the request to
// the answer: go test -tags grpcnotrace -run '^$' -bench BigBody -benchtime 5x ./internal/secrets/
func BenchmarkBigBody(b *testing.B) {
	ts := newTestService(b, storetest.SQLite(b))
	for _, ep := range []struct{ name, path, member string }{
		{"kv", "secret/data/big", "data"},
		{"fieldcrypt", "fieldcrypt/encrypt/nokey", "document"},
	} {
		for name, body := range bigBodies(ep.member) {
			b.Run(ep.name+"/"+name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					r := httptest.NewRequest("POST", "/v1/"+ep.path, strings.NewReader(body))
					r.RemoteAddr = "127.0.0.1:40000"
					r.Header.Set("X-Vault-Token", testAdminToken)
					w := httptest.NewRecorder()
					ts.svc.ServeHTTP(w, r)
				}
			})
		}
	}
}
