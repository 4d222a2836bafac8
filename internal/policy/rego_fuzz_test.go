//go:build !norego

package policy

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/policy/regoengine"
)

// FuzzRegoInput: the input document builder turns any request (path,
// method, headers, query, token claims, principal) into a document that
// OPA accepts and JSON can carry, with a stable digest, without changing
// the request, and the CUSTOM decision over it never panics and, when it
// allows, only asks for headers a policy may set.
func FuzzRegoInput(f *testing.F) {
	f.Add("GET", "/records/alice/7?x=1&x=2", "X-Sensitivity-Level", "2", `{"sub":"alice","role":"user"}`, "td/ns/prod/sa/web", int64(1772620200))
	f.Add("POST", "/records/%61lice/../bob/1#frag", "Accept", "a,b", `{"sub":"bob","roles":["admin"],"n":1.5e300}`, "", int64(0))
	f.Add("GET", "/documents/d1", "X-User", "\x00\xff", `{"sub":"alice","nested":{"a":[1,{"b":null}]}}`, "spiffe://td/ns/x", int64(-1))
	f.Add("DELETE", "/reports/../../etc", "", "", `[]`, "td", int64(1<<40))
	s := regoBundle(f, nil)
	f.Fuzz(func(t *testing.T, m, p, hname, hvalue, claims, principal string, unix int64) {
		req := newReq(dst("prod", "app", "records"), from(principal), method(m), path(p))
		if hname != "" {
			req.Headers[http.CanonicalHeaderKey(hname)] = []string{hvalue}
		}
		var c map[string]any
		if json.Unmarshal([]byte(claims), &c) == nil {
			req.Auth = &Auth{Principal: "iss/sub", Claims: c}
		}
		if unix != 0 {
			req.Time = time.Unix(unix%(1<<36), 0)
		}
		before := *req
		for _, name := range []string{"records-authz", "rbac", "ownership", "unknown"} {
			p := s.providers[name]
			b := regoengine.Current()
			in := buildInput(b, p, req, req.Path, false)
			d1, d2 := b.Digest(in), b.Digest(buildInput(b, p, req, req.Path, false))
			if d1 != d2 || len(d1) != 64 {
				t.Fatalf("%s: digests %q and %q of one request", name, d1, d2)
			}
			v, err := b.JSON(in)
			if err != nil {
				t.Fatalf("%s: input does not convert: %v", name, err)
			}
			if _, err := json.Marshal(v); err != nil {
				t.Fatalf("%s: input does not encode: %v", name, err)
			}
		}
		if _, err := s.RegoInput("records-authz", req); err != nil && !strings.Contains(err.Error(), "path") {
			t.Fatalf("RegoInput: %v", err)
		}
		for _, app := range []string{"records", "reports", "documents"} {
			r := *req
			r.Destination.Labels = map[string]string{"app": app}
			d := s.Decide(&r)
			for k := range d.Headers {
				if forbiddenHeaders[k] {
					t.Fatalf("allowed with header %s", k)
				}
			}
			if d.Outcome == Allow && d.Status != 0 {
				t.Fatalf("allow with status %d", d.Status)
			}
		}
		if !reflect.DeepEqual(before, *req) {
			t.Fatal("the builder changed the request")
		}
	})
}
