// Package config holds the typed configuration of each moatless role. Each
// role has a struct with documented defaults, Default(), Parse(io.Reader)
// that rejects unknown keys naming the offending field, and Validate().
// Files are YAML (or JSON, which is YAML).
package config

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"
)

// MaxFileSize bounds a config file; anything larger is refused unread.
const MaxFileSize = 1 << 20

// Defaults shared by the server and every client of it.
const (
	// DefaultListen is where "moatless server" listens and where admin
	// commands look for it when MOATLESS_ADDR is unset.
	DefaultListen = "127.0.0.1:8443"
	// DefaultTrustDomain is the trust domain of a server started without
	// --trust-domain.
	DefaultTrustDomain = "moatless.local"
)

// DefaultDataDir is the server's data directory when --data-dir is unset:
// $MOATLESS_DATA_DIR, else $XDG_DATA_HOME/moatless, else
// ~/.local/share/moatless. Admin commands read admin-token and bundle.pem
// from it when no credential is given, like ~/.vault-token.
func DefaultDataDir(getenv func(string) string) string {
	if getenv == nil {
		getenv = os.Getenv
	}
	if d := getenv("MOATLESS_DATA_DIR"); d != "" {
		return d
	}
	if d := getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "moatless")
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".local", "share", "moatless")
	}
	return "moatless-data"
}

// decodeStrict reads at most MaxFileSize bytes of YAML or JSON into v,
// rejecting unknown and duplicate fields. The error names the field.
func decodeStrict(r io.Reader, v any) error {
	b, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return fmt.Errorf("config: read: %w", err)
	}
	if len(b) > MaxFileSize {
		return fmt.Errorf("config: file larger than %d bytes", MaxFileSize)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// DecodeFile decodes the YAML or JSON file at path into v strictly: unknown
// keys are errors that name the key. Roles call it from their Parse.
func DecodeFile(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	if err := decodeStrict(f, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// Decode is DecodeFile for a reader.
func Decode(r io.Reader, v any) error { return decodeStrict(r, v) }
