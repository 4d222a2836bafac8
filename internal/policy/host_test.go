package policy

import (
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestParseRequestHost(t *testing.T) {
	tests := []struct {
		name     string
		host     string
		wantName string
		wantIP   string
		wantPort int32
		wantErr  error // nil: valid
	}{
		{name: "name", host: "shop.example.com", wantName: "shop.example.com", wantPort: -1},
		{name: "name_with_port", host: "shop.example.com:8080", wantName: "shop.example.com", wantPort: 8080},
		{name: "case_kept_for_folding", host: "Shop.Example.COM", wantName: "Shop.Example.COM", wantPort: -1},
		{name: "trailing_dot_removed", host: "shop.example.com.", wantName: "shop.example.com", wantPort: -1},
		{name: "trailing_dot_and_port", host: "shop.example.com.:443", wantName: "shop.example.com", wantPort: 443},
		{name: "empty_port_is_no_port", host: "shop.example.com:", wantName: "shop.example.com", wantPort: -1},
		{name: "leading_zero_port", host: "a:0080", wantName: "a", wantPort: 80},
		{name: "port_zero", host: "a:0", wantName: "a", wantPort: 0},
		{name: "highest_port", host: "a:65535", wantName: "a", wantPort: 65535},
		{name: "single_label_with_underscore", host: "my_service:9000", wantName: "my_service", wantPort: 9000},
		{name: "ipv4", host: "10.1.2.3:8080", wantName: "10.1.2.3", wantPort: 8080},
		{name: "ipv6", host: "[::1]", wantName: "[::1]", wantIP: "::1", wantPort: -1},
		{name: "ipv6_with_port", host: "[2001:DB8::7]:8443", wantName: "[2001:DB8::7]", wantIP: "2001:db8::7", wantPort: 8443},
		{name: "ipv6_uncompressed", host: "[0:0:0:0:0:0:0:1]:80", wantName: "[0:0:0:0:0:0:0:1]", wantIP: "::1", wantPort: 80},
		{name: "ipv4_mapped_ipv6", host: "[::ffff:10.1.2.3]", wantName: "[::ffff:10.1.2.3]", wantIP: "::ffff:10.1.2.3", wantPort: -1},

		{name: "port_too_big", host: "a:65536", wantErr: errHostPort},
		{name: "port_very_long", host: "a:" + strings.Repeat("9", 40), wantErr: errHostPort},
		{name: "port_letters", host: "a:8o", wantErr: errHostPort},
		{name: "port_sign", host: "a:+80", wantErr: errHostPort},
		{name: "two_ports", host: "a:80:90", wantErr: errHostBareIPv6},
		{name: "bare_ipv6", host: "::1", wantErr: errHostBareIPv6},
		{name: "only_port", host: ":8080", wantErr: errHostEmptyName},
		{name: "only_dot", host: ".", wantErr: errHostEmptyName},
		{name: "two_trailing_dots", host: "a.example..", wantErr: errHostEmptyLabel},
		{name: "leading_dot", host: ".example.com", wantErr: errHostEmptyLabel},
		{name: "double_dot", host: "a..example.com", wantErr: errHostEmptyLabel},
		{name: "percent_encoded", host: "admin%2Eexample.com", wantErr: errHostChar},
		{name: "userinfo", host: "user@admin.example.com", wantErr: errHostChar},
		{name: "slash", host: "a/b", wantErr: errHostChar},
		{name: "space", host: "a b", wantErr: errHostChar},
		{name: "tab", host: "a\tb", wantErr: errHostChar},
		{name: "non_ascii", host: "caf\xc3\xa9.example", wantErr: errHostChar},
		{name: "brackets_in_name", host: "a]b", wantErr: errHostChar},
		{name: "unclosed_bracket", host: "[::1", wantErr: errHostIPv6},
		{name: "junk_after_bracket", host: "[::1]x", wantErr: errHostIPv6},
		{name: "ipv4_in_brackets", host: "[10.1.2.3]", wantErr: errHostIPv6},
		{name: "ipv6_zone", host: "[fe80::1%25eth0]", wantErr: errHostIPv6},
		{name: "ipv_future", host: "[v1.fe80::a+en1]", wantErr: errHostIPv6},
		{name: "empty_brackets", host: "[]:80", wantErr: errHostIPv6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := parseRequestHost(tc.host)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !errors.Is(err, ErrInvalidHost) {
					t.Fatalf("parseRequestHost(%q) = %+v, %v; want %v", tc.host, h, err, tc.wantErr)
				}
				if CheckRequestHost(tc.host) == nil {
					t.Errorf("CheckRequestHost(%q) accepted it", tc.host)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseRequestHost(%q): %v", tc.host, err)
			}
			ip := ""
			if h.ip.IsValid() {
				ip = h.ip.String()
			}
			if h.name != tc.wantName || ip != tc.wantIP || h.port != tc.wantPort {
				t.Errorf("parseRequestHost(%q) = {%q %q %d}, want {%q %q %d}", tc.host, h.name, ip, h.port, tc.wantName, tc.wantIP, tc.wantPort)
			}
		})
	}
	if err := CheckRequestHost(""); err != nil {
		t.Errorf("no Host is a valid request: %v", err)
	}
}

func TestHostValues(t *testing.T) {
	type check struct {
		host string
		want bool
	}
	tests := []struct {
		name   string
		value  string
		checks []check
	}{
		{"name_on_any_port", "admin.example.com", []check{
			{"admin.example.com", true}, {"admin.example.com:8080", true}, {"ADMIN.EXAMPLE.COM.", true},
			{"admin.example.com.:1", true}, {"admin.example.com:", true},
			{"xadmin.example.com", false}, {"admin.example.com.evil", false}, {"admin.example", false},
		}},
		{"trailing_dot_in_value", "admin.example.com.", []check{{"admin.example.com", true}, {"admin.example.com.:80", true}}},
		{"upper_case_value", "Admin.Example.com", []check{{"admin.example.COM:9", true}}},
		{"suffix_on_any_port", "*.example.com", []check{
			{"a.example.com", true}, {"a.b.example.com:443", true}, {"A.Example.Com.", true},
			{"example.com", false}, {"aexample.com", false},
		}},
		{"suffix_with_trailing_dot", "*.example.com.", []check{{"a.example.com", true}, {"a.example.com.", true}}},
		{"suffix_without_dot", "*example.com", []check{{"example.com", true}, {"evilexample.com:80", true}}},
		{"prefix_on_any_port", "api.*", []check{{"api.example.com:8443", true}, {"API.internal", true}, {"apis.example.com", false}}},
		{"exact_port", "api.example.com:8443", []check{
			{"api.example.com:8443", true}, {"API.example.com.:08443", true},
			{"api.example.com", false}, {"api.example.com:443", false},
		}},
		{"any_present_port", "api.example.com:*", []check{
			{"api.example.com:1", true}, {"api.example.com.:0", true},
			{"api.example.com", false}, {"api.example.com:", false},
		}},
		{"any_host", "*", []check{{"a", true}, {"[::1]:80", true}}},
		{"any_host_on_a_port", "*:8080", []check{{"a:8080", true}, {"[::1]:8080", true}, {"a", false}, {"a:80", false}}},
		{"suffix_on_a_port", "*.example.com:8080", []check{{"a.example.com:8080", true}, {"a.example.com", false}}},
		{"ipv6", "[::1]", []check{{"[::1]", true}, {"[0:0::1]:80", true}, {"[::2]", false}, {"1.example", false}}},
		{"ipv6_uncompressed_value", "[2001:DB8:0:0:0:0:0:7]:443", []check{{"[2001:db8::7]:443", true}, {"[2001:db8::7]", false}}},
		{"ipv4", "127.0.0.1", []check{{"127.0.0.1:8080", true}, {"127.0.0.10", false}, {"[::ffff:127.0.0.1]", false}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, fe := newHostSet([]string{tc.value}, fieldPath{}.key("hosts"))
			if fe != nil {
				t.Fatalf("value %q refused: %s", tc.value, fe.msg)
			}
			for _, c := range tc.checks {
				h, err := parseRequestHost(c.host)
				if err != nil {
					t.Fatalf("host %q: %v", c.host, err)
				}
				if got := s.match(&h); got != c.want {
					t.Errorf("%q matches %q = %v, want %v", tc.value, c.host, got, c.want)
				}
			}
		})
	}
}

func TestHostValuesRefused(t *testing.T) {
	tests := []struct {
		name, value, want string
	}{
		{"url", "https://admin.example.com", "is not a host"},
		{"path", "admin.example.com/x", "is not a host name"},
		{"userinfo", "me@admin.example.com", "is not a host name"},
		{"percent", "admin%2eexample.com", "is not a host name"},
		{"space", "admin example.com", "is not a host name"},
		{"empty_label", "admin..example.com", "an empty label"},
		{"leading_dot", ".example.com", "an empty label"},
		{"wildcard_inside", "a*b.example.com", "* is a wildcard only as the first or last character"},
		{"wildcards_both_ends", "*.example.*", "* is a wildcard only as the first or last character"},
		{"wildcard_in_port", "api.example.com:80*", "the port is not a number"},
		{"bad_port", "api.example.com:http", "the port is not a number"},
		{"port_too_big", "api.example.com:70000", "the port is not a number"},
		{"empty_port", "api.example.com:", "has an empty port"},
		{"two_any_ports", "api.example.com:*:*", "write the name, then :* for any port"},
		{"port_then_any", "api.example.com:80:*", "two ports"},
		{"only_port", ":8080", "no host name"},
		{"bare_ipv6", "::1", "must be in brackets"},
		{"ipv6_wildcard", "[fe80::*]", "wildcards are not supported in an IPv6 address"},
		{"ipv6_bad", "[fe80::g]", "not an IPv6 address in brackets"},
		{"ipv4_in_brackets", "[10.0.0.1]", "not an IPv6 address in brackets"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, fe := newHostSet([]string{"ok.example.com", tc.value}, fieldPath{}.key("hosts"))
			if fe == nil {
				t.Fatalf("value %q accepted", tc.value)
			}
			if fe.path.String() != "hosts[1]" || !strings.Contains(fe.msg, tc.want) {
				t.Errorf("error at %s: %q, want %q", fe.path, fe.msg, tc.want)
			}
		})
	}
}

// Many exact names go in a map; it must agree with the patterns beside
// it, port rules included.
func TestHostSetMap(t *testing.T) {
	values := []string{"api.example.com:8443", "*.internal", "[::1]"}
	for i := 0; i < 2*exactMapMin; i++ {
		values = append(values, "Host-"+strconv.Itoa(i)+".Example.com.")
	}
	s, fe := newHostSet(values, nil)
	if fe != nil {
		t.Fatal(fe.msg)
	}
	if len(s.exact) != 2*exactMapMin {
		t.Fatalf("%d names in the map", len(s.exact))
	}
	for host, want := range map[string]bool{
		"host-3.example.com":       true,
		"HOST-15.EXAMPLE.COM.:443": true,
		"host-16.example.com":      false,
		"api.example.com:8443":     true,
		"api.example.com":          false,
		"db.internal:5432":         true,
		"[::1]:80":                 true,
	} {
		h, err := parseRequestHost(host)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.match(&h); got != want {
			t.Errorf("%q: %v, want %v", host, got, want)
		}
	}
}

// istioHostMatch is Istio's own host matcher (matcher.HostMatcher, as its
// pre-1.11 regular-expression form spells it out): the value against the
// :authority header as sent, case-insensitively, "*" any non-empty value,
// a leading "*" a suffix, a trailing "*" a prefix.
func istioHostMatch(value, authority string) bool {
	var re string
	switch {
	case value == "*":
		return authority != ""
	case strings.HasPrefix(value, "*"):
		re = ".*" + regexp.QuoteMeta(value[1:])
	case strings.HasSuffix(value, "*"):
		re = regexp.QuoteMeta(value[:len(value)-1]) + ".*"
	default:
		re = regexp.QuoteMeta(value)
	}
	return regexp.MustCompile(`(?is)^(?:` + re + `)$`).MatchString(authority)
}

// FuzzHostMatch holds the host matcher to Istio's matcher and to the
// normalization it promises, for any value the loader accepts and any
// Host a request can carry:
//
//   - on a Host in canonical form (a name, lower case, no port, no
//     trailing dot) and a value without a port or trailing dot, it agrees
//     with Istio's matcher exactly; with "host:*" values it agrees with
//     Istio on hosts that carry a port;
//   - case, a trailing dot and leading zeros in the port never change the
//     result; nor does a port, for a value without one.
func FuzzHostMatch(f *testing.F) {
	for _, s := range [][2]string{
		{"admin.example.com", "admin.example.com"}, {"*.example.com", "a.example.com:8080"},
		{"api.*", "API.example."}, {"api.example.com:*", "api.example.com:443"}, {"[::1]", "[0::1]:80"},
		{"*", "x"}, {"*:8080", "a:08080"}, {"a.b:80", "a.b.:80"}, {"*.", "a"}, {"a_b", "A_B."},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, value, host string) {
		vs, fe := newHostSet([]string{value}, nil)
		h, herr := parseRequestHost(host)
		if fe != nil || herr != nil {
			return
		}
		got := vs.match(&h)
		upper, uerr := parseRequestHost(strings.ToUpper(host))
		if uerr != nil || vs.match(&upper) != got {
			t.Fatalf("%q: %q and its upper case differ", value, host)
		}
		if h.ip.IsValid() {
			return
		}
		name := strings.ToLower(h.name)
		withPort := func(p string) bool {
			x, err := parseRequestHost(name + ":" + p)
			if err != nil {
				t.Fatalf("%q: %v", name+":"+p, err)
			}
			return vs.match(&x)
		}
		bare := withPort("")
		if h.port < 0 && bare != got {
			t.Fatalf("%q: %q and %q differ", value, host, name)
		}
		if h.port >= 0 {
			p := strconv.Itoa(int(h.port))
			if withPort("00"+p) != got {
				t.Fatalf("%q: %q and %q differ", value, host, name+":00"+p)
			}
		}
		dotted, derr := parseRequestHost(name + ".")
		if derr != nil || vs.match(&dotted) != bare {
			t.Fatalf("%q: %q and %q differ", value, name, name+".")
		}
		lv := strings.ToLower(value)
		switch {
		case strings.HasSuffix(lv, "."), strings.HasPrefix(lv, "["):
		case strings.HasSuffix(lv, ":*"):
			// Istio reads "host:*" as the prefix "host:"; with another
			// "*" in it, Istio's value matches no real Host at all.
			if h.port >= 0 && strings.Count(lv, "*") == 1 {
				authority := name + ":" + strconv.Itoa(int(h.port))
				if want := istioHostMatch(value, authority); withPort(strconv.Itoa(int(h.port))) != want {
					t.Fatalf("%q on %q: Istio says %v", value, authority, want)
				}
			}
		case !strings.Contains(lv, ":"):
			if want := istioHostMatch(value, name); bare != want {
				t.Fatalf("%q on %q: %v, Istio says %v", value, name, bare, want)
			}
			if h.port >= 0 && got != bare {
				t.Fatalf("%q: a port changed the result for %q", value, host)
			}
		}
	})
}

// FuzzParseRequestHost holds the one-pass reader of a Host to the
// definition it implements: splitAuthority, then one trailing dot off the
// name, then checkHostName (or the IPv6 literal). Same result, same error.
func FuzzParseRequestHost(f *testing.F) {
	for _, h := range []string{"a", "a.b:80", "A.b.:0080", ".", "..", ".a", "a..b", "a:", ":1", "::1", "a:1:2", "[::1]:8", "a b", "a%2e", "a:99999", "a.:"} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, h string) {
		got, gerr := parseRequestHost(h)
		want, werr := func() (requestHost, error) {
			if h == "" {
				return requestHost{}, errHostEmptyName
			}
			name, port, err := splitAuthority(h)
			if err != nil {
				return requestHost{}, err
			}
			if name[0] == '[' {
				ip, err := parseIPv6Literal(name)
				return requestHost{name: name, ip: ip, port: port}, err
			}
			name = strings.TrimSuffix(name, ".")
			if err := checkHostName(name); err != nil {
				return requestHost{}, err
			}
			return requestHost{name: name, port: port}, nil
		}()
		if (gerr == nil) != (werr == nil) || (gerr == nil && got != want) {
			t.Fatalf("parseRequestHost(%q) = %+v, %v; want %+v, %v", h, got, gerr, want, werr)
		}
	})
}
