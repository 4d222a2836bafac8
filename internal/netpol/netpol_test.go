package netpol_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/moatless/moatless/internal/netpol"
	"github.com/moatless/moatless/internal/policy"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// options per input file; the default for the others.
var options = map[string]netpol.Options{
	"serviceaccounts.yaml": {ServiceAccountLabel: "app.kubernetes.io/service-account", Ports: map[int]int{8080: 15006}},
}

// TestGolden converts each testdata/*.yaml and compares the NetworkPolicy
// YAML and the warnings with testdata/*.golden (go test -update rewrites
// them). Every object must also decode strictly into k8s.io/api's
// NetworkPolicy, so what we print is what kubectl accepts.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	for _, in := range inputs {
		name := filepath.Base(in)
		t.Run(strings.TrimSuffix(name, ".yaml"), func(t *testing.T) {
			f, err := os.Open(in)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			docs, err := policy.ParseSource(name, f)
			if err != nil {
				t.Fatal(err)
			}
			res := netpol.Convert(docs, options[name])
			out, err := netpol.YAML(res.Policies)
			if err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			got.Write(out)
			got.WriteString("# warnings:\n")
			for _, w := range res.Warnings {
				got.WriteString("# " + w + "\n")
			}
			golden := strings.TrimSuffix(in, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if got.String() != string(want) {
				t.Fatalf("output differs from %s:\n--- got\n%s\n--- want\n%s", golden, got.String(), want)
			}
			for i, doc := range bytes.Split(out, []byte("---\n")) {
				if len(bytes.TrimSpace(doc)) == 0 {
					continue
				}
				var np networkingv1.NetworkPolicy
				if err := yaml.UnmarshalStrict(doc, &np); err != nil {
					t.Fatalf("object %d is not a NetworkPolicy: %v\n%s", i, err, doc)
				}
				if np.Kind != "NetworkPolicy" || np.APIVersion != "networking.k8s.io/v1" || np.Namespace == "" || np.Name == "" {
					t.Fatalf("object %d: %+v", i, np.TypeMeta)
				}
			}
		})
	}
}
