package transit

import (
	"crypto/rand"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user + system CPU time: on a shared machine
// wall time per op mostly measures waiting for a core.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkEncrypt1KB and BenchmarkDecrypt1KB measure the transit engine
// alone (no HTTP, no store): a random nonce, the AEAD, base64 and the
// "vault:vN:" framing.
func BenchmarkEncrypt1KB(b *testing.B) {
	pt := make([]byte, 1024)
	rand.Read(pt)
	for _, typ := range []string{AES256GCM96, ChaCha20Poly1305} {
		b.Run(typ, func(b *testing.B) {
			k, _ := New("b", typ, false, false, t0)
			b.SetBytes(1024)
			b.ReportAllocs()
			cpu := cpuTime()
			for b.Loop() {
				if _, err := k.Encrypt(pt, nil, 0); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

func BenchmarkDecrypt1KB(b *testing.B) {
	pt := make([]byte, 1024)
	rand.Read(pt)
	for _, typ := range []string{AES256GCM96, ChaCha20Poly1305} {
		b.Run(typ, func(b *testing.B) {
			k, _ := New("b", typ, false, false, t0)
			ct, _ := k.Encrypt(pt, nil, 0)
			b.SetBytes(1024)
			b.ReportAllocs()
			cpu := cpuTime()
			for b.Loop() {
				if _, _, err := k.Decrypt(ct, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}
