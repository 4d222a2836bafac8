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

// sidecarFiles are the files of this package that run the sidecar role
// ("moatless sidecar"); the packages they import are what the sidecar
// links, whatever the other roles in this package pull in.
var sidecarFiles = []string{"sidecar.go", "sidecar_record.go", "meshidentity.go"}

// controlPlaneOnly are packages the data plane must not link: the control
// plane and its store and CA (ARCHITECTURE: the data plane never imports
// server, store or the CA's signing code), the detection engine, and the
// gateway with its WAF. OPA's evaluator is not among them: the sidecar
// decides Rego policies itself (docs/rego.md).
var controlPlaneOnly = []string{
	"github.com/moatless/moatless/internal/server",
	"github.com/moatless/moatless/internal/store",
	"github.com/moatless/moatless/internal/ca",
	"github.com/moatless/moatless/internal/detect",
	"github.com/moatless/moatless/internal/gateway",
	"github.com/moatless/moatless/internal/gateway/waf",
	"github.com/moatless/moatless/internal/ui",
	"github.com/corazawaf/coraza/v3",
}

// TestSidecarDoesNotLinkControlPlane: the sidecar's packages (its config,
// its proxy, everything the sidecar's command files import) depend on
// none of controlPlaneOnly. Before, internal/config imported
// internal/detect for the server's detect section, so every role linked
// the detection engine through its config.
func TestSidecarDoesNotLinkControlPlane(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	roots := []string{"github.com/moatless/moatless/internal/config", "github.com/moatless/moatless/internal/proxy"}
	fset := token.NewFileSet()
	for _, name := range sidecarFiles {
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
	for _, root := range roots {
		t.Run(strings.TrimPrefix(root, "github.com/moatless/moatless/"), func(t *testing.T) {
			// The build's own tag, so what is checked is what ships.
			out, err := exec.Command("go", "list", "-tags", "grpcnotrace", "-deps", "-f", "{{.ImportPath}}", root).CombinedOutput()
			if err != nil {
				t.Fatalf("go list %s: %v\n%s", root, err, out)
			}
			deps := strings.Fields(string(out))
			for _, bad := range controlPlaneOnly {
				if slices.Contains(deps, bad) {
					t.Errorf("%s depends on %s: %s", root, bad, importChain(t, root, bad))
				}
			}
		})
	}
}

// importChain names one path of imports from root to dep, for the error.
func importChain(t *testing.T, root, dep string) string {
	out, err := exec.Command("go", "list", "-tags", "grpcnotrace", "-deps", "-f", "{{.ImportPath}}:{{join .Imports \" \"}}", root).Output()
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
	return "(no chain found)"
}
