package authn

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/moatless/moatless/internal/policy"
)

// tokenSeeds are valid and hostile tokens for the token fuzzers.
func tokenSeeds(t testing.TB) []string {
	keys(t)
	body := mustJSON(t, claims(nil))
	return []string{
		sign(t, keyES256, claims(nil)),
		sign(t, keyRSA, claims(map[string]any{"aud": []string{"a", "b"}, "realm": map[string]any{"g": "x"}})),
		sign(t, keyEd, claims(map[string]any{"exp": 1.5e9})),
		sign(t, keyES256, claims(map[string]any{"cnf": map[string]any{"x5t#S256": "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"}})),
		rawToken(`{"alg":"none"}`, body, constSig([]byte("x"))),
		rawToken(`{"alg":"ES256","jwk":{"kty":"EC"}}`, body, constSig(make([]byte, 64))),
		rawToken(`{"alg":"ES256","kid":"a","kid":"b"}`, body, constSig(make([]byte, 64))),
		rawToken(`{"alg":"ES256","cty":"JWT"}`, body, constSig(make([]byte, 64))),
		"eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a2V5.aXY.Y2lwaGVy.dGFn",
		"a.b.c",
		"..",
		"",
	}
}

// FuzzParseToken: the strict parser never panics, every refusal is a
// token error with a known reason whose text does not repeat the input,
// and what it accepts has the claims the verifier relies on.
func FuzzParseToken(f *testing.F) {
	for _, s := range tokenSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		pt, err := parseToken(raw, DefaultMaxTokenSize, false)
		if err != nil {
			if !errors.Is(err, ErrInvalidToken) || Reason(err) == "other" {
				t.Fatalf("error %v is not a classified token error", err)
			}
			if len(raw) >= 16 && strings.Contains(err.Error(), raw) {
				t.Fatalf("error repeats the token: %v", err)
			}
			return
		}
		if pt.iss == "" || pt.claims == nil || pt.exp < 0 || pt.exp > maxUnixSeconds {
			t.Fatalf("accepted token lacks required claims: %+v", pt)
		}
		if err := checkStrictJSON(pt.payload); err != nil {
			t.Fatalf("accepted claims are not strict JSON: %v", err)
		}
		if cnf, ok := pt.claims["cnf"].(map[string]any); ok && cnf["x5t#S256"] != nil && (pt.x5t == "" || !validThumbprint(pt.x5t)) {
			t.Fatalf("accepted a token whose certificate binding would not be enforced: %q", pt.x5t)
		}
	})
}

// FuzzParseJWKS: key-set parsing never panics and keeps only usable keys.
func FuzzParseJWKS(f *testing.F) {
	keys(f)
	f.Add([]byte(jwksOf(f, keyES256, keyRSA, keyEd, keyES384)))
	f.Add([]byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}],"keys":[]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","alg":"RS256","use":"sig","key_ops":["verify"]}]}`))
	f.Add([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ks, _, err := parseJWKS(data)
		if err != nil {
			return
		}
		if len(ks.keys) == 0 || len(ks.keys) > maxJWKSKeys {
			t.Fatalf("accepted set has %d keys", len(ks.keys))
		}
		for _, k := range ks.keys {
			if k.pub == nil {
				t.Fatal("key without public key")
			}
			if k.alg != "" && !keyFits(k.pub, k.alg) {
				t.Fatalf("key kept with alg %s it cannot verify", k.alg)
			}
		}
	})
}

// strictJSONReference is checkStrictJSON's definition read a second way:
// encoding/json's token stream, which unescapes every member name, with a
// map of names per object and a count of open containers. It returns the
// same error kinds for the first violation in document order.
func strictJSONReference(data []byte) error {
	if !utf8.Valid(data) {
		return errJSONUTF8
	}
	if t := bytes.TrimLeft(data, " \t\r\n"); !json.Valid(data) || len(t) == 0 || t[0] != '{' {
		return errJSONNotObject
	}
	type frame struct {
		object, key bool
		names       map[string]bool
	}
	var stack []*frame
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return errJSONNotObject
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{', '[':
				if len(stack) == maxJSONDepth {
					return errJSONDepth
				}
				if top != nil && top.object {
					top.key = true // this container is a member's value
				}
				stack = append(stack, &frame{object: v == '{', key: v == '{', names: map[string]bool{}})
			default:
				stack = stack[:len(stack)-1]
			}
		case string:
			if top.object && top.key {
				if top.names[v] {
					return &duplicateKeyError{name: v}
				}
				top.names[v] = true
				top.key = false
			} else if top.object {
				top.key = true
			}
		default:
			if top.object {
				top.key = true
			}
		}
	}
}

// FuzzStrictJSON: the strict checker's verdict is the reference's
// (strictJSONReference), error kind and duplicate name included, and
// what it accepts encoding/json reads as an object.
func FuzzStrictJSON(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":{"b":[1,{"c":null}]}}`, `{"a":1,"a":2}`, `[]`, `{"\u0061":1,"a":2}`, `{} `,
		`{"a":{"b":1},"b":{"a":1},"c":[{"a":1},{"a":2}]}`, `{"\ud800":1,"\udc00":2}`, `{"a":"b","b":"a","a\"":1}`,
		`{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17,"a":18}`,
		strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth), "{\"a\":" + strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth) + "}",
		"{\"a\":\"\xff\"}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, want := checkStrictJSON(data), strictJSONReference(data)
		var gd, wd *duplicateKeyError
		switch {
		case errors.As(got, &gd) && errors.As(want, &wd):
			if gd.name != wd.name {
				t.Fatalf("%q: duplicate %q, reference %q", data, gd.name, wd.name)
			}
		case got != want:
			t.Fatalf("%q: %v, reference %v", data, got, want)
		}
		if got != nil {
			return
		}
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil || m == nil {
			t.Fatalf("strict JSON accepted what encoding/json refuses: %v", err)
		}
	})
}

// FuzzVerify drives the whole request path: header and query extraction,
// parsing and verification. Nothing panics, every error is a 401-type
// token error, and nothing but the seed tokens' identity is ever accepted
// (the fuzzer cannot produce signatures).
func FuzzVerify(f *testing.F) {
	seeds := tokenSeeds(f)
	for _, s := range seeds {
		f.Add("Bearer "+s, "/")
		f.Add("", "/p?access_token="+s)
	}
	f.Add("bearer  "+seeds[0], "/?access_token="+seeds[0])
	f.Add("Bearer "+seeds[0], "/?access_token="+seeds[1])
	f.Add("Basic abc", "/?access_token=%41")
	rule := inlineRule(f, keyES256, keyRSA, keyEd)
	v := NewVerifier(Options{Now: func() time.Time { return testNow }, Logger: discardLogger(), CacheSize: 64})
	f.Fuzz(func(t *testing.T, authz, path string) {
		req := &policy.Request{Path: path, Headers: http.Header{}}
		if authz != "" {
			req.Headers["Authorization"] = []string{authz}
		}
		auth, err := v.Verify(ruleList(rule), req)
		if err != nil {
			if auth != nil || !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("error %v with auth %v", err, auth)
			}
			return
		}
		if auth != nil && auth.Principal != testIssuer+"/alice" {
			t.Fatalf("accepted a principal no seed carries: %q", auth.Principal)
		}
	})
}

// FuzzSplitClaims: spaceDelimitedClaims on any claim set. The input is
// never modified; a named string claim with words becomes exactly its
// strings.Fields words, none empty, and nothing else changes.
func FuzzSplitClaims(f *testing.F) {
	f.Add(`{"roles":"admin editor","sub":"a"}`, "roles")
	f.Add(`{"roles":"  a\t\nb \u00a0c\u2003"}`, "roles")
	f.Add(`{"roles":""}`, "roles")
	f.Add(`{"roles":["a b"]}`, "roles")
	f.Add(`{"a.b":"x y","a":{"b":"x y"}}`, "a.b")
	f.Add(`{"scope":"read write"}`, "scope")
	f.Fuzz(func(t *testing.T, doc, name string) {
		var in map[string]any
		if json.Unmarshal([]byte(doc), &in) != nil || in == nil {
			return
		}
		before, err := json.Marshal(in)
		if err != nil {
			return
		}
		out := splitClaims(in, []string{name})
		if after, _ := json.Marshal(in); !bytes.Equal(before, after) {
			t.Fatalf("input modified: %s -> %s", before, after)
		}
		if len(out) != len(in) {
			t.Fatalf("claim count %d -> %d", len(in), len(out))
		}
		for k, v := range in {
			got := out[k]
			s, isString := v.(string)
			if k != name || !isString || len(strings.Fields(s)) == 0 {
				if !reflect.DeepEqual(got, v) {
					t.Fatalf("claim %q changed: %#v -> %#v", k, v, got)
				}
				continue
			}
			list, ok := got.([]any)
			if !ok {
				t.Fatalf("claim %q = %#v, want a list", k, got)
			}
			words := strings.Fields(s)
			if len(list) != len(words) {
				t.Fatalf("claim %q: %d words, want %d", k, len(list), len(words))
			}
			for i, w := range list {
				if w != words[i] {
					t.Fatalf("claim %q word %d = %#v, want %q", k, i, w, words[i])
				}
			}
		}
	})
}
