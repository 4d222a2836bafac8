package token

import (
	"crypto/rand"
	"encoding/json"
	"syscall"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
)

// BenchmarkSignAccessToken is signing alone: claims to compact JWS with
// the service's signer, per algorithm.
func BenchmarkSignAccessToken(b *testing.B) {
	for _, alg := range []string{"ES256", "EdDSA", "RS256"} {
		b.Run(alg, func(b *testing.B) {
			s := &Service{cfg: Config{KEK: make([]byte, 32), Rand: rand.Reader, SigningAlg: alg, Now: time.Now,
				IDTokenTTL: DefaultIDTokenTTL, ExchangeTTL: DefaultExchangeTTL, KeyRotation: DefaultKeyRotation}}
			sk, err := s.newSigningKey(time.Now())
			if err != nil {
				b.Fatal(err)
			}
			k, err := s.loadKey(sk)
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			c := &accessClaims{Issuer: "https://as.example", Subject: "svc", Audience: jwt.Audience{"payments"},
				Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute)), IssuedAt: jwt.NewNumericDate(now), ID: "abcdefghijklmnopqrstuv",
				ClientID: "svc", Scope: "read", Roles: []string{"service"}}
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				payload, _ := json.Marshal(c)
				obj, err := k.accessSigner.Sign(payload)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := obj.CompactSerialize(); err != nil {
					b.Fatal(err)
				}
			}
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
