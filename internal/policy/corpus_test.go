package policy

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// TestIstioCorpus loads Istio's own policy documents — the examples of its
// reference pages and tasks, and its validation test data with Istio's
// verdicts — and holds the loader to the same verdicts. testdata/istio
// holds them as vectors, one directory per verdict, each document parsed
// on its own:
//
//	accept/  Istio accepts every document: so must Moatless.
//	refuse/  Istio refuses every document (a "# istio:" comment above each
//	         says with what error): so must Moatless.
//	differ/  Istio accepts, Moatless refuses on purpose; a "# moatless:"
//	         comment in the file gives a substring of the error, and the
//	         file says why (docs/policy.md, "Deliberate differences").
//
// Each file's first lines name its source (repository, path, commit).
func TestIstioCorpus(t *testing.T) {
	counts := map[string]int{}
	for _, verdict := range []string{"accept", "refuse", "differ"} {
		files, err := filepath.Glob(filepath.Join("testdata", "istio", verdict, "*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Fatalf("no %s vectors", verdict)
		}
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(data, []byte("# ")) {
				t.Errorf("%s: does not start with a comment naming its source", file)
			}
			want := ""
			if verdict == "differ" {
				m := regexp.MustCompile(`(?m)^# moatless: (.+)$`).FindSubmatch(data)
				if m == nil {
					t.Fatalf("%s: no \"# moatless:\" line", file)
				}
				want = string(m[1])
			}
			for _, c := range splitYAML(data) {
				if isBlankYAML(c.text) {
					continue
				}
				counts[verdict]++
				name := filepath.Base(file) + ":" + strconv.Itoa(c.line)
				docs, err := ParseSource(file, bytes.NewReader(c.text))
				switch verdict {
				case "accept":
					if err != nil {
						t.Errorf("%s: Istio accepts it; Moatless refuses: %v", name, err)
						continue
					}
					if _, err := Compile(docs, Options{}); err != nil {
						t.Errorf("%s: does not compile: %v", name, err)
					}
				case "refuse":
					if !regexp.MustCompile(`(?m)^# istio: \S`).Match(c.text) {
						t.Errorf("%s: no \"# istio:\" comment with Istio's error", name)
					}
					if err == nil {
						t.Errorf("%s: Istio refuses it; Moatless accepts it", name)
					}
				case "differ":
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Errorf("%s: want an error with %q, got %v", name, want, err)
					}
				}
			}
		}
	}
	t.Logf("Istio corpus: %d accepted, %d refused, %d refused on purpose", counts["accept"], counts["refuse"], counts["differ"])
}

// TestRefusedDocuments: every document of testdata/refused is refused
// with the error its "# error:" line gives (after the field path), and
// says what Istio does with it ("# istio:").
func TestRefusedDocuments(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "refused", "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no vectors")
	}
	wantRE := regexp.MustCompile(`(?m)^# error: (.+)$`)
	istioRE := regexp.MustCompile(`(?m)^# istio: \S`)
	n := 0
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range splitYAML(data) {
			if isBlankYAML(c.text) {
				continue
			}
			n++
			name := filepath.Base(file) + ":" + strconv.Itoa(c.line)
			m := wantRE.FindSubmatch(c.text)
			if m == nil || !istioRE.Match(c.text) {
				t.Errorf("%s: needs \"# error:\" and \"# istio:\" lines", name)
				continue
			}
			_, err := ParseSource("in.yaml", bytes.NewReader(c.text))
			if err == nil {
				t.Errorf("%s: accepted; want %q", name, m[1])
				continue
			}
			if !strings.Contains(err.Error(), ": "+string(m[1])) {
				t.Errorf("%s: error %q\nwant %q", name, err, m[1])
			}
		}
	}
	if n < 20 {
		t.Errorf("only %d documents", n)
	}
}

// The fields whose emptiness the loader refuses exist in the Istio API
// this is built with: a renamed field would otherwise silently escape.
func TestEmptyRefusedFieldsExist(t *testing.T) {
	names := make([]protoreflect.FullName, 0, len(emptyRefused)+len(emptyBesideSibling))
	for n := range emptyRefused {
		names = append(names, n)
	}
	for n := range emptyBesideSibling {
		names = append(names, n)
	}
	for _, n := range names {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(n)
		if err != nil {
			t.Errorf("%s: %v", n, err)
			continue
		}
		if fd, ok := d.(protoreflect.FieldDescriptor); ok && !fd.IsList() && !fd.IsMap() {
			t.Errorf("%s is neither a list nor a map", n)
		}
	}
}
