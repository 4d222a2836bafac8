package policy

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
)

func TestParseCheckRequest(t *testing.T) {
	good := `{"source": {"principal": "spiffe://td/ns/prod/sa/orders", "ip": "10.1.2.3"},
	  "destination": {"namespace": "prod", "labels": {"app": "payments"}, "port": 8080, "ip": "10.1.9.9"},
	  "request": {"protocol": "http", "method": "POST", "path": "/api/v1/payments/42?x=1",
	              "host": "payments.prod", "headers": {"authorization": "Bearer x", "x-multi": ["a", "b"]}},
	  "connection": {"sni": "payments.prod.svc"}}`
	r, err := ParseCheckRequest(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if r.Source.Principal != "td/ns/prod/sa/orders" || r.Source.IP.String() != "10.1.2.3" ||
		r.Destination.Port != 8080 || r.Destination.Labels["app"] != "payments" || r.Method != "POST" ||
		r.Headers.Get("Authorization") != "Bearer x" || len(r.Headers["X-Multi"]) != 2 || r.SNI != "payments.prod.svc" || r.Source.CertSHA256 != "" {
		t.Errorf("request = %+v", r)
	}
	const thumb = "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU" // SHA-256 of ""
	withCert := strings.Replace(good, `"ip": "10.1.2.3"`, `"ip": "10.1.2.3", "cert_sha256": "`+thumb+`"`, 1)
	if r, err := ParseCheckRequest(strings.NewReader(withCert)); err != nil || r.Source.CertSHA256 != thumb {
		t.Errorf("cert_sha256: %+v, %v", r, err)
	}

	base := func(edit string) string { return strings.Replace(good, `"method": "POST"`, edit, 1) }
	tests := []struct{ name, in, want string }{
		{"not_a_spiffe_id", strings.Replace(good, "spiffe://td/ns/prod/sa/orders", "td/ns/prod/sa/orders", 1), "source.principal"},
		{"bad_ip", strings.Replace(good, "10.1.2.3", "10.1.2", 1), "source.ip"},
		{"no_namespace", strings.Replace(good, `"namespace": "prod"`, `"namespace": ""`, 1), "destination.namespace"},
		{"no_port", strings.Replace(good, `"port": 8080`, `"port": 0`, 1), "destination.port"},
		{"unknown_field", strings.Replace(good, `"port": 8080`, `"port": 8080, "prot": 1`, 1), `unknown field "prot"`},
		{"no_method", base(`"method": ""`), "request.method"},
		{"bad_protocol", strings.Replace(good, `"http"`, `"udp"`, 1), "request.protocol"},
		{"tcp_with_method", strings.Replace(good, `"http"`, `"tcp"`, 1), "a tcp request has no method"},
		{"relative_path", strings.Replace(good, `"/api/v1/payments/42?x=1"`, `"api"`, 1), "request.path"},
		{"header_newline", strings.Replace(good, `"Bearer x"`, `"a\nb"`, 1), "line break"},
		{"pseudo_header", strings.Replace(good, `"authorization"`, `":path"`, 1), "not a header name"},
		{"trailing_data", good + "{}", "unexpected data"},
		{"header_number", strings.Replace(good, `"Bearer x"`, `7`, 1), "string or a list of strings"},
		{"cert_sha256_hex", strings.Replace(withCert, thumb, strings.Repeat("ab", 32), 1), "source.cert_sha256"},
		{"cert_sha256_padded", strings.Replace(withCert, thumb, thumb[:42]+"=", 1), "source.cert_sha256"},
		{"cert_sha256_plaintext_peer", strings.Replace(withCert, "spiffe://td/ns/prod/sa/orders", "", 1), "plaintext peer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCheckRequest(strings.NewReader(tc.in))
			if !errors.Is(err, ErrBadCheckRequest) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// CertThumbprint is RFC 8705 §3.1's x5t#S256 of the certificate's DER.
func TestCertThumbprint(t *testing.T) {
	for _, tc := range []struct{ name, der, want string }{
		{"empty", "", "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"},
		{"abc", "abc", "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := CertThumbprint(&x509.Certificate{Raw: []byte(tc.der)}); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}
