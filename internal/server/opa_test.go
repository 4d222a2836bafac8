package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/opaapi/opaclient"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
)

// TestOPARestAPI drives the server's OPA-compatible API with a client
// written from OPA's REST API documentation (opaclient): modules and data
// written through it are policy versions like "policy apply" makes, a
// module that does not compile gets OPA's 400 with the line while the
// version in force keeps serving, and every call needs the admin token.
func TestOPARestAPI(t *testing.T) {
	e := start(t, "")
	ctx := context.Background()
	opa := &opaclient.Client{Base: "https://" + e.addr, Token: e.token, HTTP: e.client(nil)}

	if err := opa.PutPolicy(ctx, "microservices/authz", authzModule); err != nil {
		t.Fatal(err)
	}
	if err := opa.PutData(ctx, "clearance", map[string]any{"alice": 3, "bob": 1}); err != nil {
		t.Fatal(err)
	}
	alice := map[string]any{"user": map[string]any{"id": "alice", "role": "user"}, "resource": map[string]any{"owner": "alice", "sensitivity_level": 3}}
	query := func(in any) any {
		t.Helper()
		res, defined, err := opa.Query(ctx, "microservices/authz/allow", in)
		if err != nil || !defined {
			t.Fatalf("query: %v %v", defined, err)
		}
		return res
	}
	if query(alice) != true {
		t.Fatal("alice denied")
	}
	// Nested write, then read back through GET.
	if err := opa.PutData(ctx, "clearance/alice", 2); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := opa.Get(ctx, "clearance/alice"); err != nil || !ok || v.(float64) != 2 {
		t.Fatalf("clearance/alice = %v %v %v", v, ok, err)
	}
	if query(alice) != false {
		t.Fatal("alice allowed above her new clearance")
	}
	if _, defined, err := opa.Get(ctx, "clearance/nobody"); err != nil || defined {
		t.Fatalf("undefined document: defined=%v %v", defined, err)
	}

	// A module that does not compile: OPA's 400 with the error's line;
	// the version in force still answers.
	err := opa.PutPolicy(ctx, "microservices/authz", strings.Replace(authzModule, "default allow = false", "default allow = false\nallow if {", 1))
	var oe *opaclient.Error
	if !errors.As(err, &oe) || oe.Status != 400 || oe.Code != "invalid_parameter" || len(oe.Errors) == 0 ||
		oe.Errors[0].Location == nil || oe.Errors[0].Location.File != "microservices/authz" || oe.Errors[0].Location.Row < 6 {
		t.Fatalf("broken module: %v %+v", err, oe)
	}
	if p, err := opa.GetPolicy(ctx, "microservices/authz"); err != nil || p.Raw != authzModule || len(p.AST) == 0 {
		t.Fatalf("module in force: %+v %v", p, err)
	}
	if err := opa.PutData(ctx, "clearance/alice", 3); err != nil {
		t.Fatal(err)
	}
	if query(alice) != true {
		t.Fatal("alice denied after the refused module")
	}

	// Data that conflicts with a package is refused; deletes; 404s.
	if err := opa.PutData(ctx, "microservices", map[string]any{}); !errors.As(err, &oe) || oe.Status != 400 {
		t.Fatalf("conflicting data: %v", err)
	}
	if err := opa.DeleteData(ctx, "clearance/alice"); err != nil {
		t.Fatal(err)
	}
	if err := opa.DeleteData(ctx, "clearance/alice"); !errors.As(err, &oe) || oe.Status != 404 || oe.Code != "resource_not_found" {
		t.Fatalf("second delete: %v", err)
	}
	if err := opa.DeletePolicy(ctx, "nope"); !errors.As(err, &oe) || oe.Status != 404 {
		t.Fatalf("delete of a missing module: %v", err)
	}
	list, err := opa.ListPolicies(ctx)
	if err != nil || len(list) != 1 || list[0].ID != "microservices/authz" {
		t.Fatalf("list: %+v %v", list, err)
	}

	// Every write was a policy version, by the admin token.
	var hist []store.PolicyVersion
	e.admin("GET", server.PathAdminPolicyHistory, nil, &hist)
	if len(hist) != 5 || hist[0].Actor != "admin-token" || hist[0].Action != "delete" {
		t.Fatalf("history: %+v", hist)
	}

	// No token, a wrong token: OPA's 401.
	for _, tok := range []string{"", "wrong"} {
		anon := &opaclient.Client{Base: opa.Base, Token: tok, HTTP: e.client(nil)}
		if _, _, err := anon.Query(ctx, "microservices/authz/allow", alice); !errors.As(err, &oe) || oe.Status != 401 || oe.Code != "unauthorized" {
			t.Fatalf("token %q: %v", tok, err)
		}
		if err := anon.PutData(ctx, "clearance", map[string]any{}); !errors.As(err, &oe) || oe.Status != 401 {
			t.Fatalf("token %q write: %v", tok, err)
		}
	}
}
