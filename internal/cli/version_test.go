package cli

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestVersionOutput: "version" honours -o json (it printed text whatever
// -o said) and refuses another format.
func TestVersionOutput(t *testing.T) {
	code, out, stderr := runCLI(t, nil, "version", "-o", "json")
	var bi struct{ Version, Module, Go string }
	if code != ExitOK || json.Unmarshal([]byte(out), &bi) != nil || bi.Module != "github.com/moatless/moatless" || bi.Go == "" || bi.Version == "" {
		t.Fatalf("version -o json: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	code, out, _ = runCLI(t, nil, "version")
	if code != ExitOK || !strings.HasPrefix(out, "moatless ") || !strings.Contains(out, "go  ") {
		t.Fatalf("version: exit %d, stdout %q", code, out)
	}
	code, _, stderr = runCLI(t, nil, "version", "-o", "yaml")
	if code != ExitUsage || !strings.Contains(stderr, `-o must be text or json, not "yaml"`) {
		t.Fatalf("version -o yaml: exit %d, stderr %q", code, stderr)
	}
}
