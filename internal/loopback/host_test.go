package loopback

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

// TestHostAllowed: a Host header reaches a loopback listener only when it
// is a loopback address, localhost or the listener's configured host; a
// name that a page rebinds to 127.0.0.1 never does.
func TestHostAllowed(t *testing.T) {
	for _, tc := range []struct {
		name, host, listen string
		want               bool
	}{
		{"ipv4_loopback_with_port", "127.0.0.1:15000", "127.0.0.1:15000", true},
		{"ipv4_loopback_other_port", "127.0.0.1:9", "127.0.0.1:15000", true},
		{"ipv4_loopback_range", "127.3.4.5:15000", "127.0.0.1:15000", true},
		{"ipv4_loopback_no_port", "127.0.0.1", "127.0.0.1:15000", true},
		{"ipv6_loopback", "[::1]:15000", "[::1]:15000", true},
		{"ipv6_loopback_no_port", "[::1]", "127.0.0.1:15000", true},
		{"ipv4_mapped_loopback", "[::ffff:127.0.0.1]:15000", "127.0.0.1:15000", true},
		{"localhost", "localhost:15000", "127.0.0.1:15000", true},
		{"localhost_upper_case", "LOCALHOST:15000", "127.0.0.1:15000", true},
		{"no_host_http10", "", "127.0.0.1:15000", true},
		{"configured_name", "admin.node1.internal:15000", "admin.node1.internal:15000", true},
		{"configured_address", "10.1.2.3:15000", "10.1.2.3:15000", true},
		{"any_ip_on_unspecified_listener", "10.1.2.3:15000", "0.0.0.0:15000", true},
		{"any_ipv6_on_unspecified_listener", "[fd00::1]:15000", "[::]:15000", true},
		{"any_ip_on_listener_without_host", "10.1.2.3:15000", ":15000", true},
		{"empty_port", "127.0.0.1:", "127.0.0.1:15000", true},

		{"rebound_name", "attacker.example:15000", "127.0.0.1:15000", false},
		{"rebound_name_no_port", "attacker.example", "127.0.0.1:15000", false},
		{"name_under_localhost", "localhost.attacker.example:15000", "127.0.0.1:15000", false},
		{"name_starting_with_loopback", "127.0.0.1.attacker.example:15000", "127.0.0.1:15000", false},
		{"localhost_trailing_dot", "localhost.:15000", "127.0.0.1:15000", false},
		{"other_ip_on_loopback_listener", "10.1.2.3:15000", "127.0.0.1:15000", false},
		{"name_on_unspecified_listener", "attacker.example:15000", "0.0.0.0:15000", false},
		{"other_name_than_configured", "attacker.example:15000", "admin.node1.internal:15000", false},
		{"zone", "[fe80::1%25eth0]:15000", "[::]:15000", false},
		{"empty_name_with_port", ":15000", "127.0.0.1:15000", false},
		{"brackets_only", "[]", "127.0.0.1:15000", false},
		{"port_not_a_number", "127.0.0.1:evil", "127.0.0.1:15000", false},
		{"userinfo_in_port", "127.0.0.1:80@evil.example", "127.0.0.1:15000", false},
		{"localhost_port_not_a_number", "localhost:x", "127.0.0.1:15000", false},
		{"name_on_listener_without_host", "attacker.example:15000", ":15000", false},
		{"ip_on_unparsable_listener", "10.1.2.3:15000", "garbage", false},
		{"ip_on_no_listener", "10.1.2.3:15000", "", false},
		{"short_ipv4", "127.1:15000", "127.0.0.1:15000", false},
		{"octal_ipv4", "0177.0.0.1:15000", "127.0.0.1:15000", false},
		{"hex_ipv4", "0x7f.1:15000", "127.0.0.1:15000", false},
		{"decimal_ipv4", "2130706433:15000", "127.0.0.1:15000", false},
		{"ipv6_loopback_zone", "[::1%25lo]:15000", "127.0.0.1:15000", false},
		{"ipv6_unbracketed", "::1", "127.0.0.1:15000", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := HostAllowed(tc.host, tc.listen); got != tc.want {
				t.Fatalf("HostAllowed(%q, %q) = %v, want %v", tc.host, tc.listen, got, tc.want)
			}
		})
	}
}

// TestGuardHostOverHTTP: over a real loopback connection, a request under
// a rebound name gets 421 and never reaches the handler; one by address
// (as Prometheus scrapes) or as localhost does.
func TestGuardHostOverHTTP(t *testing.T) {
	reached := 0
	srv := httptest.NewServer(GuardHost("127.0.0.1:15000", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached++
		io.WriteString(w, "metrics\n")
	})))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	for _, tc := range []struct {
		name, host string
		want       int
	}{
		{"by_address", "127.0.0.1:" + port, http.StatusOK},
		{"as_localhost", "localhost:" + port, http.StatusOK},
		{"rebound", "attacker.example:" + port, http.StatusMisdirectedRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := reached
			req, _ := http.NewRequest("GET", srv.URL+"/metrics", nil)
			req.Host = tc.host
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, b)
			}
			if got := reached - before; (tc.want == http.StatusOK) != (got == 1) {
				t.Fatalf("handler reached %d times", got)
			}
			if tc.want != http.StatusOK && (strings.Contains(string(b), "metrics") || !strings.Contains(string(b), "DNS rebinding")) {
				t.Fatalf("refusal body: %s", b)
			}
		})
	}
}

// FuzzHostAllowed: whatever the Host, an admitted one is a loopback
// address, localhost, the listener's own host, or absent — never a name
// an attacker could own.
func FuzzHostAllowed(f *testing.F) {
	for _, s := range []string{"127.0.0.1:1", "[::1]", "localhost", "a.example:80", "[::ffff:127.0.0.1]:2", "%", "[", "[]:1", "localhost.:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		if !HostAllowed(host, "127.0.0.1:15000") || host == "" {
			return
		}
		name := host
		if h, _, err := net.SplitHostPort(host); err == nil {
			name = h
		}
		name = strings.TrimSuffix(strings.TrimPrefix(name, "["), "]")
		if strings.EqualFold(name, "localhost") {
			return
		}
		ip, err := netip.ParseAddr(name)
		if err != nil || !ip.Unmap().IsLoopback() {
			t.Fatalf("admitted %q", host)
		}
	})
}
