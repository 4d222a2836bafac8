package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// demoMarker marks a directory as a demo's working directory, so a later
// run may clear what the earlier one left.
const demoMarker = ".moatless-demo"

// demoOwned are the paths a demo run creates in its directory: the
// server's data, the sidecars' state, logs and the applied policies.
var demoOwned = []string{"server", "logs", "policies.yaml", "payments", "orders", "frontend", "reports"}

// prepareDemoDir makes dir ready for a demo run. A directory a demo used
// before (a second "moatless demo --dir D --keep") is cleared of the
// earlier run's data — its CA, OAuth clients, users and revocations would
// collide with the new run's — and only of that: other files stay. A
// directory that holds other files and no demo's is refused rather than
// written into. It reports whether an earlier run's data was removed.
func prepareDemoDir(dir string) (cleared bool, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	marker := filepath.Join(dir, demoMarker)
	_, merr := os.Stat(marker)
	_, serr := os.Stat(filepath.Join(dir, "server", "bundle.pem"))
	switch {
	case merr == nil || serr == nil:
		for _, name := range demoOwned {
			p := filepath.Join(dir, name)
			if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
				continue
			}
			cleared = true
			if err := os.RemoveAll(p); err != nil {
				return cleared, fmt.Errorf("clear the previous demo run: %w", err)
			}
		}
	case len(entries) > 0:
		return false, fmt.Errorf("--dir %s holds files that are not a demo's; give an empty directory, or one an earlier demo used", dir)
	}
	if err := os.WriteFile(marker, []byte("moatless demo working directory: a new demo run clears what an earlier one left here\n"), 0o600); err != nil {
		return cleared, err
	}
	return cleared, nil
}
