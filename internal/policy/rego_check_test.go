package policy

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/wire"
)

// TestCompileRegoSharedChecks: the checks both executables make of a policy
// version's modules and data refuse the same inputs with the same errors,
// with OPA and without. Run it both ways: go test ./internal/policy/ and
// go test -tags norego ./internal/policy/.
func TestCompileRegoSharedChecks(t *testing.T) {
	mod := func(id string) wire.RegoModule {
		return wire.RegoModule{ID: id, Source: "package " + strings.TrimSuffix(id, ".rego") + "\n"}
	}
	many := make([]wire.RegoModule, MaxRegoModules+1)
	for i := range many {
		many[i] = mod("m" + strconv.Itoa(i) + ".rego")
	}
	manyData := make([]wire.DataDocument, MaxDataDocuments+1)
	for i := range manyData {
		manyData[i] = wire.DataDocument{Key: "d" + strconv.Itoa(i), Value: []byte(`1`)}
	}
	cases := []struct {
		name    string
		modules []wire.RegoModule
		data    []wire.DataDocument
		want    string // in the error
	}{
		{name: "too_many_modules", modules: many, want: "more than 1000 modules"},
		{name: "too_many_data_documents", data: manyData, want: "more than 1000 data documents"},
		{name: "duplicate_module", modules: []wire.RegoModule{mod("a.rego"), mod("b.rego"), mod("a.rego")}, want: `module "a.rego" given twice`},
		{name: "duplicate_before_its_size", modules: []wire.RegoModule{mod("a.rego"), {ID: "a.rego", Source: strings.Repeat("#", MaxRegoModuleSize+1)}}, want: "given twice"},
		{name: "bad_module_id", modules: []wire.RegoModule{{ID: "../x.rego", Source: "package x\n"}}, want: "segment"},
		{name: "module_too_large", modules: []wire.RegoModule{{ID: "big.rego", Source: "package big\n" + strings.Repeat("#", MaxRegoModuleSize)}}, want: "big.rego: module is larger than 1024 KiB"},
		{name: "first_failure_wins", modules: []wire.RegoModule{{ID: "../x.rego", Source: "package x\n"}, mod("a.rego"), mod("a.rego")}, want: "segment"},
		{name: "duplicate_data_document", modules: []wire.RegoModule{mod("a.rego")}, data: []wire.DataDocument{{Key: "k", Value: []byte(`1`)}, {Key: "k", Value: []byte(`2`)}}, want: `data document "k" given twice`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := CompileRego(c.modules, c.data)
			if err == nil {
				t.Fatalf("compiled: %v", r.Modules())
			}
			var re *RegoError
			if !errors.As(err, &re) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %T %v is not a *RegoError wrapping ErrInvalid", err, err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
		})
	}

	// What passes is kept sorted by ID (modules) and key (data), and is
	// a copy: the caller's slices may change afterwards.
	in := []wire.RegoModule{mod("c.rego"), mod("a.rego"), mod("b.rego")}
	data := []wire.DataDocument{{Key: "z", Value: []byte(`{"a":1}`)}, {Key: "y", Value: []byte(`2`)}}
	r, err := CompileRego(in, data)
	if err != nil {
		t.Fatal(err)
	}
	in[0] = mod("x.rego")
	var ids []string
	for _, m := range r.Modules() {
		ids = append(ids, m.ID)
	}
	if got := strings.Join(ids, ","); got != "a.rego,b.rego,c.rego" {
		t.Errorf("modules %s, want a.rego,b.rego,c.rego", got)
	}
	if d := r.Data(); len(d) != 2 || d[0].Key != "y" || d[1].Key != "z" {
		t.Errorf("data %+v, want y then z", d)
	}
}
