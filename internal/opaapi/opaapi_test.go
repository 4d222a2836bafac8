//go:build !norego

package opaapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/opaapi/opaclient"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/wire"
)

func TestParseDataRequest(t *testing.T) {
	cases := []struct {
		name, method, path, query, body, ctype string
		wantPath                               []string
		wantInput                              any
		wantErr                                string
		wantStatus                             int
	}{
		{name: "post_with_input", method: "POST", path: "/v1/data/a/b", body: `{"input": {"x": 1}}`, wantPath: []string{"a", "b"}, wantInput: map[string]any{"x": jsonNumber("1")}},
		{name: "post_without_body", method: "POST", path: "/v1/data/a", wantPath: []string{"a"}},
		{name: "root", method: "GET", path: "/v1/data", wantPath: []string{}},
		{name: "root_slash", method: "GET", path: "/v1/data/", wantPath: []string{}},
		{name: "escaped_slash_is_one_key", method: "GET", path: "/v1/data/a%2Fb/c", wantPath: []string{"a/b", "c"}},
		{name: "get_input_param", method: "GET", path: "/v1/data/a", query: `input={"y":true}`, wantPath: []string{"a"}, wantInput: map[string]any{"y": true}},
		{name: "pretty_and_diagnostics_ignored", method: "GET", path: "/v1/data/a", query: "pretty=true&metrics=true&explain=full", wantPath: []string{"a"}},
		{name: "empty_segment", method: "GET", path: "/v1/data/a//b", wantErr: "empty segment", wantStatus: 400},
		{name: "nul_segment", method: "GET", path: "/v1/data/a/%00", wantErr: "NUL", wantStatus: 400},
		{name: "bad_escape", method: "GET", path: "/v1/data/a/%zz", wantErr: "invalid URL escape", wantStatus: 400},
		{name: "not_data", method: "GET", path: "/v1/database/x", wantErr: "not a data path", wantStatus: 404},
		{name: "too_deep", method: "GET", path: "/v1/data" + strings.Repeat("/a", 65), wantErr: "more than 64", wantStatus: 400},
		{name: "unknown_param", method: "GET", path: "/v1/data/a", query: "inptu=1", wantErr: "unknown query parameter", wantStatus: 400},
		{name: "input_param_on_post", method: "POST", path: "/v1/data/a", query: "input=1", wantErr: "only of GET", wantStatus: 400},
		{name: "unknown_body_field", method: "POST", path: "/v1/data/a", body: `{"inptu": 1}`, wantErr: "unknown field", wantStatus: 400},
		{name: "duplicate_key", method: "POST", path: "/v1/data/a", body: `{"input": {"a": 1, "a": 2}}`, wantErr: "duplicate key", wantStatus: 400},
		{name: "trailing_data", method: "POST", path: "/v1/data/a", body: `{"input": 1} {}`, wantErr: "after the document", wantStatus: 400},
		{name: "body_not_object", method: "POST", path: "/v1/data/a", body: `[1]`, wantErr: "want {\"input\"", wantStatus: 400},
		{name: "deep_nesting", method: "POST", path: "/v1/data/a", body: `{"input": ` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, wantErr: "nested deeper", wantStatus: 400},
		{name: "too_large", method: "POST", path: "/v1/data/a", body: `{"input": "` + strings.Repeat("x", MaxInputSize) + `"}`, wantErr: "larger than", wantStatus: 413},
		{name: "yaml_refused", method: "POST", path: "/v1/data/a", body: "input: 1", ctype: "application/x-yaml", wantErr: "send application/json", wantStatus: 415},
		{name: "patch_refused", method: "PATCH", path: "/v1/data/a", wantErr: "not allowed", wantStatus: 405},
		{name: "put_value", method: "PUT", path: "/v1/data/clearance", body: `{"alice": 3}`, wantPath: []string{"clearance"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			q, _ := url.ParseQuery(c.query)
			h := http.Header{}
			if c.ctype != "" {
				h.Set("Content-Type", c.ctype)
			}
			dr, err := ParseDataRequest(c.method, c.path, q, h, strings.NewReader(c.body), MaxInputSize)
			if c.wantErr != "" {
				var oe *Error
				if !errors.As(err, &oe) || !strings.Contains(oe.Message, c.wantErr) || oe.Status != c.wantStatus {
					t.Fatalf("error %v, want %d containing %q", err, c.wantStatus, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(dr.Path, c.wantPath) || !reflect.DeepEqual(dr.Input, c.wantInput) {
				t.Fatalf("path %q input %#v", dr.Path, dr.Input)
			}
		})
	}
}

// regoOf compiles the example module with clearance data.
func regoOf(t *testing.T) *policy.Rego {
	t.Helper()
	r, err := policy.CompileRego([]wire.RegoModule{{ID: "authz.rego", Source: "package microservices.authz\nimport rego.v1\ndefault allow := false\nallow if data.clearance[input.user] >= input.level\nlevels := [1, 2, 3]\n"}},
		[]wire.DataDocument{{Key: "clearance", Value: []byte(`{"alice": 3}`)}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestReadOnlyHandler is the sidecar's OPA API: queries answered for an
// OPA client, writes refused, non-loopback callers refused.
func TestReadOnlyHandler(t *testing.T) {
	r := regoOf(t)
	mux := http.NewServeMux()
	(&Handler{Rego: func() *policy.Rego { return r }}).Register(mux, LoopbackOnly)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	ctx := context.Background()
	opa := &opaclient.Client{Base: srv.URL}

	if v, ok, err := opa.Query(ctx, "microservices/authz/allow", map[string]any{"user": "alice", "level": 2}); err != nil || !ok || v != true {
		t.Fatalf("allow = %v %v %v", v, ok, err)
	}
	if v, ok, err := opa.Get(ctx, "microservices/authz/levels/1"); err != nil || !ok || v.(float64) != 2 {
		t.Fatalf("array index: %v %v %v", v, ok, err)
	}
	if _, ok, err := opa.Get(ctx, "nothing/here"); err != nil || ok {
		t.Fatalf("undefined: %v %v", ok, err)
	}
	if ps, err := opa.ListPolicies(ctx); err != nil || len(ps) != 1 || ps[0].ID != "authz.rego" {
		t.Fatalf("policies: %+v %v", ps, err)
	}
	var oe *opaclient.Error
	if err := opa.PutData(ctx, "clearance", map[string]any{}); !errors.As(err, &oe) || oe.Status != 405 {
		t.Fatalf("write: %v", err)
	}
	if err := opa.PutPolicy(ctx, "x", "package x\n"); !errors.As(err, &oe) || oe.Status != 405 {
		t.Fatalf("policy write: %v", err)
	}
	if err := opa.DeletePolicy(ctx, "authz.rego"); !errors.As(err, &oe) || oe.Status != 405 {
		t.Fatalf("policy delete: %v", err)
	}
	if _, err := opa.GetPolicy(ctx, "../etc/passwd"); !errors.As(err, &oe) || oe.Status/100 != 4 {
		t.Fatalf("dot-dot policy id: %v", err)
	}

	// A caller that is not on loopback is refused whatever it asks.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/v1/data/microservices/authz/allow", strings.NewReader(`{"input": {}}`))
	req.RemoteAddr = "192.0.2.7:4000"
	mux.ServeHTTP(rec, req)
	if rec.Code != 403 || !strings.Contains(rec.Body.String(), "loopback") {
		t.Fatalf("remote caller: %d %s", rec.Code, rec.Body)
	}

	// Without modules: data is {} and everything under it undefined.
	empty := http.NewServeMux()
	(&Handler{Rego: func() *policy.Rego { return nil }}).Register(empty, nil)
	es := httptest.NewServer(empty)
	defer es.Close()
	eo := &opaclient.Client{Base: es.URL}
	if v, ok, err := eo.Get(ctx, ""); err != nil || !ok || !reflect.DeepEqual(v, map[string]any{}) {
		t.Fatalf("empty data: %v %v %v", v, ok, err)
	}
}

// FuzzParseDataRequest: any method, path, query and body is parsed or
// refused with an OPA error of a 4xx status, never a panic; what parses
// has a path of valid keys and, re-encoded, parses the same.
func FuzzParseDataRequest(f *testing.F) {
	f.Add("POST", "/v1/data/a/b", "", `{"input": {"x": [1, 2.5e3, null, "s"]}}`, "application/json")
	f.Add("GET", "/v1/data/a%2F..%2Fb/%2e%2e", "input=%7B%7D&pretty=true", "", "")
	f.Add("PUT", "/v1/data/", "", `{"k": {"n": 1}}`, "text/plain")
	f.Add("POST", "/v1/data//x", "", `{"input": 1, "input": 2}`, "")
	f.Add("DELETE", "/v1/data/a/%00", "", "", "")
	f.Fuzz(func(t *testing.T, method, path, query, body, ctype string) {
		q, _ := url.ParseQuery(query)
		h := http.Header{}
		if ctype != "" {
			h.Set("Content-Type", ctype)
		}
		dr, err := ParseDataRequest(method, path, q, h, strings.NewReader(body), 4096)
		if err != nil {
			var oe *Error
			if !errors.As(err, &oe) || oe.Status < 400 || oe.Status > 499 || oe.Code == "" {
				t.Fatalf("error %T %v", err, err)
			}
			return
		}
		for _, k := range dr.Path {
			if k == "" || strings.ContainsRune(k, 0) {
				t.Fatalf("bad key %q", k)
			}
		}
		esc := "/v1/data"
		for _, k := range dr.Path {
			esc += "/" + url.PathEscape(k)
		}
		again, err := ParseDataRequest("GET", esc, nil, nil, strings.NewReader(""), 4096)
		if err != nil || !reflect.DeepEqual(again.Path, dr.Path) {
			t.Fatalf("path %q re-escaped as %q parsed as %v, %v", dr.Path, esc, again, err)
		}
	})
}

func jsonNumber(s string) any { return json.Number(s) }
