package server_test

import (
	"crypto/tls"
	"strings"
	"testing"
)

// TestListenerRefusesTLS12: under TLS 1.2 a client certificate travels in
// the clear, so an observer on the path reads the caller's SPIFFE ID off
// the handshake. A client offering at most TLS 1.2 — with or without a
// certificate, with any suite — is refused with a protocol_version alert;
// one offering TLS 1.3 gets it.
func TestListenerRefusesTLS12(t *testing.T) {
	e := start(t, "")
	for _, tc := range []struct {
		name string
		max  uint16
		cert bool
		ok   bool
	}{
		{"tls12_anonymous", tls.VersionTLS12, false, false},
		{"tls12_with_svid", tls.VersionTLS12, true, false},
		{"tls11", tls.VersionTLS11, false, false},
		{"tls13_with_svid", tls.VersionTLS13, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf := &tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS10, MaxVersion: tc.max}
			if tc.cert {
				n := e.attest("spiffe://example.org/agent/tls12")
				conf.Certificates = []tls.Certificate{*n.cert()}
			}
			conn, err := tls.Dial("tcp", e.addr, conf)
			if !tc.ok {
				if err == nil {
					v := conn.ConnectionState().Version
					conn.Close()
					t.Fatalf("handshake at %s succeeded", tls.VersionName(v))
				}
				if !strings.Contains(err.Error(), "protocol version") {
					t.Fatalf("refusal: %v, want a protocol_version alert", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if v := conn.ConnectionState().Version; v != tls.VersionTLS13 {
				t.Fatalf("negotiated %s", tls.VersionName(v))
			}
		})
	}
}
