package cli

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/testpki"
)

// gateway -check shows the limits as they will be in force, defaults
// filled (linger_bytes from max_body_bytes), and refuses lingering
// bounds out of range with the key named.
func TestGatewayCheckShowsLimits(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "example.org")
	pub := ca.WriteFiles(t, dir, "public", ca.SVID(t, "spiffe://example.org/ns/edge/sa/gateway", time.Hour))
	conf := func(name, limits string) string {
		return writeFile(t, dir, name, fmt.Sprintf(`listen: "127.0.0.1:0"
tls: {cert: %q, key: %q}
identity: {files: {cert: %q, key: %q, bundle: %q}}
limits: %s
routes:
  - {name: orders, path_prefix: /, upstreams: ["127.0.0.1:1"], spiffe_id: "spiffe://example.org/ns/prod/sa/orders"}
admin: "off"
`, pub.Cert, pub.Key, pub.Cert, pub.Key, pub.Bundle, limits))
	}
	tests := []struct {
		name, limits string
		wantCode     int
		want         string
	}{
		{"defaults", "{}", ExitOK, "config OK\nlimits: max_body_bytes=10485760 linger_timeout=2s linger_time=5s linger_bytes=10485760\n"},
		{"large_body_limit", "{max_body_bytes: 67108864}", ExitOK, "limits: max_body_bytes=67108864 linger_timeout=2s linger_time=5s linger_bytes=67108864\n"},
		{"set", "{linger_timeout: 500ms, linger_time: 30s, linger_bytes: 20971520}", ExitOK, "limits: max_body_bytes=10485760 linger_timeout=500ms linger_time=30s linger_bytes=20971520\n"},
		{"negative_timeout", "{linger_timeout: -2s}", ExitUsage, "limits.linger_timeout: -2s is not between 10ms and 1m0s"},
		{"bytes_under_body_limit", "{linger_bytes: 1048576}", ExitUsage, "limits.linger_bytes: 1048576 is less than limits.max_body_bytes 10485760"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runCLI(t, nil, "gateway", "-config", conf(tc.name+".yaml", tc.limits), "-check")
			if code != tc.wantCode || !strings.Contains(out+stderr, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d with %q", code, out, stderr, tc.wantCode, tc.want)
			}
		})
	}
}
