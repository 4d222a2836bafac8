package token

import (
	"context"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestParseParams(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
		want     map[string]int // parameter → number of values
	}{
		{"simple", "a=1&b=2", true, map[string]int{"a": 1, "b": 1}},
		{"empty_value_is_omitted", "a=&b=2", true, map[string]int{"b": 1}},
		{"empty_pairs_skipped", "a=1&&b=2&", true, map[string]int{"a": 1, "b": 1}},
		{"duplicate_refused", "a=1&a=2", false, nil},
		{"duplicate_empty_refused", "a=&a=2", false, nil},
		{"repeatable_audience", "audience=x&audience=y", true, map[string]int{"audience": 2}},
		{"repeatable_resource", "resource=https://a&resource=https://b", true, map[string]int{"resource": 2}},
		{"semicolon_refused", "a=1;b=2", false, nil},
		{"bad_escape_refused", "a=%zz", false, nil},
		{"bad_key_escape_refused", "%zz=1", false, nil},
		{"plus_is_space", "scope=a+b", true, map[string]int{"scope": 1}},
		{"too_many", strings.Repeat("a=1&", 0) + manyParams(maxParams+1), false, nil},
		{"too_long", "a=" + strings.Repeat("x", maxParamLen+1), false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := parseParams(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("err %v", err)
			}
			for k, n := range tc.want {
				if len(p[k]) != n {
					t.Fatalf("%s: %v", k, p[k])
				}
			}
			if tc.ok && len(p) != len(tc.want) {
				t.Fatalf("params %v", p)
			}
		})
	}
}

func manyParams(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		b.WriteString("p")
		b.WriteString(strings.Repeat("x", i))
		b.WriteString("=1&")
	}
	return b.String()
}

// FuzzParseParams: the strict form parser accepts exactly what
// net/url.ParseQuery reads without error, within the limits (parameter
// count, value length, no repeated parameter but audience and resource),
// and reads it the same, empty values left out.
func FuzzParseParams(f *testing.F) {
	for _, s := range []string{"grant_type=client_credentials&scope=a+b", "a=1&a=2", "audience=x&audience=y", "%zz", "a=1;b", "=&=&", "a=%E2%82%AC",
		"a=&a=", "audience=&audience=x", "a%3Db=c", "a=b=c", "&&&", "a", "a&a", "%61=1&a=2", manyParams(maxParams) + "x=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := parseParams(raw)
		ref, refErr := url.ParseQuery(raw)
		pairs := 0
		seen := map[string]int{}
		for kv := range strings.SplitSeq(raw, "&") {
			if kv == "" {
				continue
			}
			pairs++
			k, _, _ := strings.Cut(kv, "=")
			if k, err := url.QueryUnescape(k); err == nil {
				seen[k]++
			}
		}
		accept := refErr == nil && pairs <= maxParams
		want := url.Values{}
		for k, vs := range ref {
			if seen[k] > 1 && !repeatable[k] {
				accept = false
			}
			for _, v := range vs {
				if len(v) > maxParamLen {
					accept = false
				}
				if v != "" {
					want[k] = append(want[k], v)
				}
			}
		}
		if (err == nil) != accept {
			t.Fatalf("parseParams(%q) error %v; net/url reads %v (%v), %d pairs", raw, err, ref, refErr, pairs)
		}
		if err == nil && !reflect.DeepEqual(url.Values(p), want) {
			t.Fatalf("parseParams(%q) = %v, want %v", raw, p, want)
		}
	})
}

func FuzzParseScope(f *testing.F) {
	for _, s := range []string{"openid email", "a  b", "a\"b", "", " a", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sc, err := parseScope(s)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, tok := range sc {
			if tok == "" || strings.ContainsAny(tok, " \"\\") || seen[tok] {
				t.Fatalf("bad scope token %q in %q", tok, s)
			}
			seen[tok] = true
		}
	})
}

// FuzzClientAssertion feeds the pre-verification read of client
// assertions: it must never panic, and whatever it returns is only a
// lookup key (the signature is checked afterwards).
func FuzzClientAssertion(f *testing.F) {
	for _, s := range []string{
		"eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhIiwiaXNzIjoiYSJ9.c2ln",
		"eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.",
		"a.b.c", "", "....",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		sub, h, err := peekAssertion(raw)
		if err != nil {
			return
		}
		if sub == "" || len(sub) > maxClientIDLen {
			t.Fatalf("subject %q", sub)
		}
		switch h.Algorithm {
		case "ES256", "ES384", "RS256", "PS256", "EdDSA":
		default:
			t.Fatalf("algorithm %q passed the allow-list", h.Algorithm)
		}
	})
}

// FuzzExchangeRequest checks that the token exchange request parser
// either refuses with a standard error or yields a complete request.
func FuzzExchangeRequest(f *testing.F) {
	for _, s := range []string{
		"subject_token=x&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&audience=orders",
		"subject_token=x&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&resource=https%3A%2F%2Fa&resource=https%3A%2F%2Fb",
		"subject_token=x&actor_token=y",
		"audience=a&audience=a",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := parseParams(raw)
		if err != nil {
			return
		}
		r, oe := parseExchange(p)
		if oe != nil {
			if oe.Code != errInvalidRequest && oe.Code != errInvalidTarget {
				t.Fatalf("non-standard error %q", oe.Code)
			}
			return
		}
		if r.subjectToken == "" || !supportedType(r.subjectType) || len(r.audiences) == 0 || (r.actorToken == "") != (r.actorType == "") {
			t.Fatalf("incomplete request accepted: %+v", r)
		}
	})
}

// FuzzPasswordHash feeds stored hash strings to the verifier: malformed
// or absurd parameters must be refused, never computed.
func FuzzPasswordHash(f *testing.F) {
	f.Add("$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA")
	f.Add("$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdA$aGFzaA")
	f.Add("$argon2i$v=19$m=8,t=1,p=1$$")
	f.Fuzz(func(t *testing.T, encoded string) {
		if strings.Contains(encoded, "m=") {
			// Keep each run cheap: the verifier caps memory at 1 GiB,
			// which is still too slow to fuzz.
			var m int
			if i := strings.Index(encoded, "m="); i >= 0 {
				for _, c := range encoded[i+2:] {
					if c < '0' || c > '9' {
						break
					}
					m = m*10 + int(c-'0')
					if m > 1<<16 {
						return
					}
				}
			}
		}
		if i := strings.Index(encoded, "t="); i >= 0 {
			// Only cheap iteration counts (1 or 2).
			rest := encoded[i+2:]
			if rest == "" || (rest[0] != '1' && rest[0] != '2') || (len(rest) > 1 && rest[1] >= '0' && rest[1] <= '9') {
				return
			}
		}
		checkPassword(encoded, "password")
	})
}

// Password hashing is bounded: when every slot is taken, a request waits
// only as long as its context allows and is refused.
func TestHashingIsBounded(t *testing.T) {
	s := &Service{hashSem: make(chan struct{}, 1), metrics: newMetrics()}
	if err := s.acquireHash(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.acquireHash(ctx); err == nil {
		t.Fatal("acquired a second slot of one")
	}
	s.releaseHash()
	if err := s.acquireHash(context.Background()); err != nil {
		t.Fatalf("a freed slot was not reusable: %v", err)
	}
}

// FuzzRedirectAllowed: a redirect URI that is not one of the registered
// strings is accepted only as a registered http loopback IP URI with
// another port: net/url reads both as scheme http, no userinfo, the same
// loopback IP literal (127.0.0.1 or ::1), a port of 1 to 65535 or none,
// and the same path, query and fragment. The seeds run as a normal test.
func FuzzRedirectAllowed(f *testing.F) {
	for _, s := range [][2]string{
		{"http://127.0.0.1/cb", "http://127.0.0.1:51234/cb"},
		{"http://[::1]:8400/cb", "http://[::1]/cb"},
		{"http://127.0.0.1/cb", "http://127.0.0.1:80@evil.example/cb"},
		{"http://127.0.0.1", "http://127.0.0.1:1"},
		{"http://127.0.0.1/cb?a=1", "http://127.0.0.1:9/cb?a=1"},
		{"http://127.0.0.1/cb", "http://127.0.0.1:9/cb#x"},
		{"http://localhost/cb", "http://localhost:9/cb"},
		{"https://app.example/cb", "https://app.example:443/cb"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, registered, requested string) {
		if !redirectAllowed([]string{registered}, requested) || registered == requested {
			return
		}
		reg, err1 := url.Parse(registered)
		req, err2 := url.Parse(requested)
		if err1 != nil || err2 != nil {
			t.Fatalf("accepted %q for %q, which net/url cannot parse (%v, %v)", requested, registered, err1, err2)
		}
		for _, u := range []*url.URL{reg, req} {
			if u.Scheme != "http" || u.User != nil || (u.Hostname() != "127.0.0.1" && u.Hostname() != "::1") {
				t.Fatalf("accepted %q for %q: %q is not a plain http loopback IP URI", requested, registered, u)
			}
			if p := u.Port(); p != "" {
				if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
					t.Fatalf("accepted %q for %q: port %q", requested, registered, p)
				}
			}
		}
		if reg.Hostname() != req.Hostname() || reg.EscapedPath() != req.EscapedPath() || reg.RawQuery != req.RawQuery || reg.Fragment != req.Fragment || reg.ForceQuery != req.ForceQuery {
			t.Fatalf("accepted %q for %q: they differ beyond the port", requested, registered)
		}
	})
}
