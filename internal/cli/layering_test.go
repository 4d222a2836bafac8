package cli

import (
	"go/parser"
	"go/token"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// controlPlane are packages no data-plane role may link: the control
// plane, its store and CA (ARCHITECTURE: the data plane never imports
// server, store or the CA's signing code), the detection engine and the
// dashboard.
var controlPlane = []string{
	"github.com/moatless/moatless/internal/server",
	"github.com/moatless/moatless/internal/store",
	"github.com/moatless/moatless/internal/ca",
	"github.com/moatless/moatless/internal/detect",
	"github.com/moatless/moatless/internal/ui",
}

// edgeOnly are the gateway's own packages, its WAF above all (Coraza and
// the rule set, megabytes the sidecar would carry for nothing). OPA's
// evaluator is not among them: "moatless sidecar" decides Rego policies
// itself (docs/rego.md); moatless-sidecar leaves it out (opa, below).
var edgeOnly = []string{
	"github.com/moatless/moatless/internal/gateway",
	"github.com/moatless/moatless/internal/gateway/waf",
	"github.com/corazawaf/coraza/v3",
}

// notInSidecar are what moatless-sidecar leaves to the one binary besides
// the control plane and the edge: this package's command table (it links
// every command), the token service, the secrets engine, Envoy's
// ext_authz server and the audit log's store side.
var notInSidecar = []string{
	"github.com/moatless/moatless/internal/cli",
	"github.com/moatless/moatless/internal/token",
	"github.com/moatless/moatless/internal/secrets",
	"github.com/moatless/moatless/internal/extauthz",
	"github.com/moatless/moatless/internal/audit",
}

// opa is OPA's evaluator and what only it brings in (its JWT library and
// GraphQL parser), which moatless-sidecar leaves out: it doubled the
// executable's code and initializers and kept the sidecar over 20 MB of
// RSS (docs/benchmarks.md). It is linked by importing regoopa, which
// registers it (internal/policy/regoengine); no build tag is involved, so
// a plain "go build" or "go install" of moatless-sidecar leaves it out
// too. Every package under opaPrefix is forbidden besides these.
var opa = []string{
	"github.com/moatless/moatless/internal/policy/regoopa",
	"github.com/open-policy-agent/opa/v1/ast",
	"github.com/open-policy-agent/opa/v1/rego",
	"github.com/open-policy-agent/opa/v1/topdown",
	"github.com/lestrrat-go/jwx/v3/jwk",
	"github.com/vektah/gqlparser/v2/ast",
}

// opaPrefix is OPA's module: no package of it may be linked where opa
// is forbidden.
const opaPrefix = "github.com/open-policy-agent/"

// TestDataPlaneDoesNotLinkControlPlane: what each data-plane role links
// (the packages its command files in this package import, and the named
// roots) depends on none of its forbidden packages, whatever the other
// roles in this package pull in. moatless-sidecar, the executable, is one
// of the roots: what is checked is what it links. Before, internal/config imported
// internal/detect for the server's detect section, so every role linked
// the detection engine through its config.
func TestDataPlaneDoesNotLinkControlPlane(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	roles := []struct {
		name   string
		tags   string   // the build tags it is built with (Makefile; "" is a plain go build)
		files  []string // this package's files that run the role
		roots  []string
		forbid []string
	}{
		// The sidecar, the agent and version live in dataplane, which
		// moatless-sidecar is built from: the executable links what its
		// main imports and nothing else, not even this package's table,
		// nor OPA: as shipped (grpcnotrace) and as a user builds it
		// ("go build ./cmd/moatless-sidecar", "go install …@v").
		{"moatless-sidecar", "grpcnotrace", nil, []string{"github.com/moatless/moatless/cmd/moatless-sidecar"},
			slices.Concat(controlPlane, edgeOnly, notInSidecar, opa)},
		{"moatless-sidecar_plain_go_build", "", nil, []string{"github.com/moatless/moatless/cmd/moatless-sidecar"},
			slices.Concat(controlPlane, edgeOnly, notInSidecar, opa)},
		{"dataplane", "grpcnotrace", nil, []string{"github.com/moatless/moatless/internal/cli/dataplane"},
			slices.Concat(controlPlane, edgeOnly, notInSidecar, opa)},
		{"gateway", "grpcnotrace", []string{"gateway.go"}, nil, controlPlane},
	}
	for _, role := range roles {
		t.Run(role.name, func(t *testing.T) {
			roots := slices.Clone(role.roots)
			fset := token.NewFileSet()
			for _, name := range role.files {
				f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
				if err != nil {
					t.Fatal(err)
				}
				for _, imp := range f.Imports {
					p, _ := strconv.Unquote(imp.Path.Value)
					if strings.HasPrefix(p, "github.com/moatless/moatless/") && !slices.Contains(roots, p) {
						roots = append(roots, p)
					}
				}
			}
			// One go list for all roots, with the build's own tag, so what
			// is checked is what ships.
			args := append([]string{"list", "-tags", role.tags, "-deps", "-f", "{{.ImportPath}}"}, roots...)
			out, err := exec.Command("go", args...).CombinedOutput()
			if err != nil {
				t.Fatalf("go list: %v\n%s", err, out)
			}
			deps := strings.Fields(string(out))
			forbid := slices.Clone(role.forbid)
			if slices.Contains(role.forbid, opa[0]) {
				for _, d := range deps {
					if strings.HasPrefix(d, opaPrefix) && !slices.Contains(forbid, d) {
						forbid = append(forbid, d)
					}
				}
			}
			chains := 0
			for _, bad := range forbid {
				if !slices.Contains(deps, bad) {
					continue
				}
				if chains++; chains > 5 {
					t.Errorf("%s links %s", role.name, bad) // a chain per package would take minutes
					continue
				}
				for _, root := range roots {
					if chain := importChain(role.tags, root, bad); chain != "" {
						t.Errorf("%s links %s: %s", role.name, bad, chain)
					}
				}
			}
		})
	}
}

// TestMoatlessLinksRegoEvaluator: the one binary registers OPA's
// evaluator (this package imports regoopa), so "moatless sidecar",
// "moatless gateway" and "moatless policy check" evaluate Rego; so does
// moatless-sidecar built with -tags rego.
func TestMoatlessLinksRegoEvaluator(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	for _, c := range []struct{ tags, cmd string }{
		{"", "moatless"},
		{"grpcnotrace", "moatless"},
		// The opt-in: a sidecar-only executable that evaluates Rego.
		{"grpcnotrace,rego", "moatless-sidecar"},
	} {
		out, err := exec.Command("go", "list", "-tags", c.tags, "-deps", "github.com/moatless/moatless/cmd/"+c.cmd).CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		if !slices.Contains(strings.Fields(string(out)), opa[0]) {
			t.Errorf("tags %q: cmd/%s does not link %s", c.tags, c.cmd, opa[0])
		}
	}
}

// importChain names one path of imports from root to dep, for the error;
// "" when root does not reach dep.
func importChain(tags, root, dep string) string {
	out, err := exec.Command("go", "list", "-tags", tags, "-deps", "-f", "{{.ImportPath}}:{{join .Imports \" \"}}", root).Output()
	if err != nil {
		return "(go list failed: " + err.Error() + ")"
	}
	imports := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		p, is, _ := strings.Cut(line, ":")
		imports[p] = strings.Fields(is)
	}
	prev := map[string]string{root: ""}
	queue := []string{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == dep {
			chain := []string{p}
			for q := prev[p]; q != ""; q = prev[q] {
				chain = append(chain, q)
			}
			slices.Reverse(chain)
			return strings.Join(chain, " → ")
		}
		for _, next := range imports[p] {
			if _, seen := prev[next]; !seen {
				prev[next] = p
				queue = append(queue, next)
			}
		}
	}
	return ""
}
