//go:build norego

package opaapi

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/opaapi/opaclient"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/wire"
)

// TestHandlerWithoutOPA is moatless-sidecar's admin listener: every call
// of the Data and Policy APIs is a 501 in OPA's error shape that says
// which executable serves them, and non-loopback callers are still
// refused first.
func TestHandlerWithoutOPA(t *testing.T) {
	r, err := policy.CompileRego([]wire.RegoModule{{ID: "authz.rego", Source: "package authz\n\nallow := true\n"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	(&Handler{Rego: func() *policy.Rego { return r }}).Register(mux, LoopbackOnly)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	ctx := context.Background()
	opa := &opaclient.Client{Base: srv.URL}
	calls := []struct {
		name string
		call func() error
	}{
		{"query", func() error { _, _, err := opa.Query(ctx, "authz/allow", map[string]any{"user": "alice"}); return err }},
		{"get_data", func() error { _, _, err := opa.Get(ctx, "authz"); return err }},
		{"list_policies", func() error { _, err := opa.ListPolicies(ctx); return err }},
		{"get_policy", func() error { _, err := opa.GetPolicy(ctx, "authz.rego"); return err }},
		{"put_data", func() error { return opa.PutData(ctx, "x", map[string]any{}) }},
		{"put_policy", func() error { return opa.PutPolicy(ctx, "x", "package x\n") }},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			var oe *opaclient.Error
			if err := c.call(); !errors.As(err, &oe) || oe.Status != http.StatusNotImplemented || !strings.Contains(oe.Message, "moatless sidecar") {
				t.Fatalf("error %v, want a 501 naming moatless sidecar", err)
			}
		})
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/v1/data/authz/allow", strings.NewReader(`{"input": {}}`))
	req.RemoteAddr = "192.0.2.7:4000"
	mux.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Fatalf("non-loopback caller: %d, want 403", rec.Code)
	}
}
