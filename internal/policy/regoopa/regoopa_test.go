package regoopa

import (
	"errors"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/moatless/moatless/internal/policy/regoengine"
)

// TestErrorsReadAsOPAs: OPA's errors, converted to regoengine's, render
// exactly as OPA renders them (users and tests read "file:row: code:
// message" and the detail lines), and keep code and location for the
// Policy API.
func TestErrorsReadAsOPAs(t *testing.T) {
	cases := []struct {
		name, src string
	}{
		{"syntax_error", "package x\nallow if {\n"},
		{"unsafe_var", "package x\nimport rego.v1\nallow if y\n"},
		{"type_error_with_details", "package x\nimport rego.v1\nallow if count(1)\n"},
		{"undefined_function", "package x\nimport rego.v1\nallow if nope(1)\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var want ast.Errors
			m, err := ast.ParseModuleWithOpts("m.rego", c.src, ast.ParserOptions{RegoVersion: ast.RegoV1})
			if err == nil {
				comp := ast.NewCompiler()
				comp.Compile(map[string]*ast.Module{"m.rego": m})
				want = comp.Errors
			} else if !errors.As(err, &want) {
				t.Fatalf("parse: %v", err)
			}
			if len(want) == 0 {
				t.Fatal("OPA found no error: the case tests nothing")
			}
			_, got := Engine{}.Compile([]regoengine.Module{{ID: "m.rego", Source: c.src}}, nil, nil)
			var es regoengine.Errors
			if !errors.As(got, &es) || len(es) != len(want) {
				t.Fatalf("Compile: %v, want %d of OPA's errors", got, len(want))
			}
			for i, w := range want {
				if es[i].Error() != w.Error() {
					t.Errorf("error %d:\n%s\nwant OPA's\n%s", i, es[i].Error(), w.Error())
				}
				if es[i].Code != w.Code || !es[i].Located || es[i].File != w.Location.File || es[i].Row != w.Location.Row {
					t.Errorf("error %d: %+v, want code %s at %s:%d", i, es[i], w.Code, w.Location.File, w.Location.Row)
				}
			}
		})
	}
}

// TestRegisterTwicePanics: one evaluator per executable; a second
// registration (two evaluator packages linked) fails at init, before
// any decision could depend on which won.
func TestRegisterTwicePanics(t *testing.T) {
	if regoengine.Current() == nil {
		t.Fatal("importing regoopa did not register it")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("a second Register did not panic")
		}
	}()
	regoengine.Register(Engine{})
}
