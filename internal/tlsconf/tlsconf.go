// Package tlsconf holds the TLS settings every Moatless listener shares:
// TLS 1.2 at least, and under TLS 1.2 only ECDHE key exchange with AEAD
// ciphers. Go's defaults still offer CBC suites with SHA-1 MACs
// (ECDHE-ECDSA-AES128-SHA, ECDHE-ECDSA-AES256-SHA, …) for old clients;
// every client of ours speaks TLS 1.3 or an AEAD suite, and scanners
// rightly flag CBC (Lucky13-style padding oracles, no integrity of the
// padding). TLS 1.3's suites are all AEAD and not configurable in Go.
package tlsconf

import "crypto/tls"

// CipherSuites are the TLS 1.2 suites offered, strongest first: ECDHE
// with AES-GCM or ChaCha20-Poly1305, for ECDSA and RSA certificates.
var CipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// Server applies the listener policy to c and returns it: MinVersion at
// least TLS 1.2 and CipherSuites. A c that asks for TLS 1.3 only keeps it.
func Server(c *tls.Config) *tls.Config {
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	c.CipherSuites = CipherSuites
	return c
}

// AEAD reports whether the suite with this ID is an AEAD suite (every TLS
// 1.3 suite, and the TLS 1.2 GCM and ChaCha20-Poly1305 ones).
func AEAD(id uint16) bool {
	switch id {
	case tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_256_GCM_SHA384:
		return true
	}
	return false
}
