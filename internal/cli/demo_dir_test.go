package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPrepareDemoDir: an earlier demo's data is cleared and nothing else;
// a directory of other files is refused, not written into.
func TestPrepareDemoDir(t *testing.T) {
	write := func(t *testing.T, dir string, files ...string) {
		for _, f := range files {
			p := filepath.Join(dir, f)
			os.MkdirAll(filepath.Dir(p), 0o700)
			if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name    string
		files   []string
		cleared bool
		wantErr string
		kept    []string
		gone    []string
	}{
		{"new_directory", nil, false, "", nil, nil},
		{"earlier_run_with_marker", []string{demoMarker, "server/ca.db", "logs/server.log", "orders/state/node-svid.pem", "policies.yaml", "notes.txt"},
			true, "", []string{"notes.txt", demoMarker}, []string{"server", "logs", "orders", "policies.yaml"}},
		{"earlier_run_without_marker", []string{"server/bundle.pem", "logs/server.log"}, true, "", []string{demoMarker}, []string{"server", "logs"}},
		{"someone_elses_directory", []string{"thesis.tex", "server/x"}, false, "not a demo's", []string{"thesis.tex", "server/x"}, []string{demoMarker}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "d")
			write(t, dir, tt.files...)
			cleared, err := prepareDemoDir(dir)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
			} else if err != nil || cleared != tt.cleared {
				t.Fatalf("cleared %v, err %v; want %v", cleared, err, tt.cleared)
			}
			for _, k := range tt.kept {
				if _, err := os.Stat(filepath.Join(dir, k)); err != nil {
					t.Errorf("%s removed", k)
				}
			}
			for _, g := range tt.gone {
				if _, err := os.Stat(filepath.Join(dir, g)); err == nil {
					t.Errorf("%s still there", g)
				}
			}
		})
	}
}
