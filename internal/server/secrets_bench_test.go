package server_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/moatless/moatless/fieldcrypt"
)

// The secrets API through the server: TLS, token lookup, the ACL, the
// store, the barrier and the fsynced audit record of every request.

func benchSecrets(b *testing.B, method, path string, bodyFor func(e *env) []byte, token string) {
	for _, clients := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%dxGOMAXPROCS", clients), func(b *testing.B) {
			e := benchEnv(b)
			var body []byte
			if bodyFor != nil {
				body = bodyFor(e)
			}
			b.SetParallelism(clients)
			cpu := cpuTime()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				c := e.client(nil)
				for pb.Next() {
					req, _ := http.NewRequest(method, "https://"+e.addr+path, bytes.NewReader(body))
					req.Header.Set("X-Vault-Token", tokenOr(token, e.token))
					resp, err := c.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

func tokenOr(t, def string) string {
	if t != "" {
		return t
	}
	return def
}

// benchEnv is a server with a KV secret, a transit key and a derived key.
func benchEnv(b *testing.B) *env {
	e := startB(b)
	c := e.client(nil)
	e.vreq(c, "POST", "/v1/secret/data/bench/db", e.token, map[string]any{"data": map[string]any{"user": "app", "password": "p4ssw0rd-bench"}})
	e.vreq(c, "POST", "/v1/transit/keys/bench", e.token, nil)
	return e
}

// BenchmarkSecretsKVRead reads one KV v2 secret (a client token from
// AppRole would cost the same lookup as the admin token's check plus the
// token row; measured with the admin token).
func BenchmarkSecretsKVRead(b *testing.B) {
	benchSecrets(b, "GET", "/v1/secret/data/bench/db", nil, "")
}

func BenchmarkSecretsTransitEncrypt1KB(b *testing.B) {
	pt := make([]byte, 1024)
	rand.Read(pt)
	body, _ := json.Marshal(map[string]any{"plaintext": base64.StdEncoding.EncodeToString(pt)})
	benchSecrets(b, "POST", "/v1/transit/encrypt/bench", func(*env) []byte { return body }, "")
}

func BenchmarkSecretsTransitDecrypt1KB(b *testing.B) {
	pt := make([]byte, 1024)
	rand.Read(pt)
	benchSecrets(b, "POST", "/v1/transit/decrypt/bench", func(e *env) []byte {
		_, out := e.vreq(e.client(nil), "POST", "/v1/transit/encrypt/bench", e.token, map[string]any{"plaintext": base64.StdEncoding.EncodeToString(pt)})
		body, _ := json.Marshal(map[string]any{"ciphertext": dataOf(out)["ciphertext"]})
		return body
	}, "")
}

// BenchmarkSecretsFieldEncrypt10Fields encrypts ten fields of a customer
// record with the fieldcrypt package through the server's transit API (one
// batch request per document).
func BenchmarkSecretsFieldEncrypt10Fields(b *testing.B) {
	e := benchEnv(b)
	doc := []byte(`{"id": 1042, "status": "active", "name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0958",
 "ssn": "123-45-6789", "credit_card": "4111111111111111", "iban": "GB82WEST12345698765432", "dob": "1815-12-10",
 "address": {"street": "12 St James's Square", "postcode": "SW1Y 4JH"}, "passport": "925076473"}`)
	enc := fieldcrypt.Encrypter{Cipher: &fieldcrypt.Transit{Addr: "https://" + e.addr, Key: "bench", Token: e.token, Client: e.client(nil)},
		Fields: []string{"name", "email", "phone", "ssn", "credit_card", "iban", "dob", "address.street", "address.postcode", "passport"}}
	cpu := cpuTime()
	for b.Loop() {
		if _, err := enc.Encrypt(b.Context(), doc); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "docs/s")
	b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
}
