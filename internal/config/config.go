// Package config holds the typed configuration of each moatless role. Each
// role has a struct with documented defaults, Default(), Parse(io.Reader)
// that rejects unknown keys naming the offending field, and Validate().
// Files are YAML (or JSON, which is YAML).
package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
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
	if err := checkKeys(b, reflect.TypeOf(v)); err != nil {
		return err
	}
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		return decodeError(b, err)
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

// fileError is a Validate error of the file at path: named by the file,
// with the line of each field it names (withLines).
func fileError(path string, err error) error {
	b, rerr := os.ReadFile(path)
	if rerr != nil || len(b) > MaxFileSize {
		return fmt.Errorf("%s: %w", path, err)
	}
	return fmt.Errorf("%s: %w", path, withLines(b, err))
}

// Decode is DecodeFile for a reader.
func Decode(r io.Reader, v any) error { return decodeStrict(r, v) }

// checkKeys walks the YAML in b along the Go type t (its json tags, as
// sigs.k8s.io/yaml decodes) and returns an error naming the first key
// that t has no field for, with its line and field path, so a typo in a
// long file is found at once. Input yaml.v3 cannot parse is left to the
// decoder, whose error says why.
func checkKeys(b []byte, t reflect.Type) error {
	var root yamlv3.Node
	if err := yamlv3.Unmarshal(b, &root); err != nil || len(root.Content) == 0 {
		return nil
	}
	return walkKeys(root.Content[0], t, "")
}

var jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()

// retiredKeys are keys a config type once had, each refused with what to
// write instead: silently ignoring one would leave a setting that no
// longer does what its author meant, and a nearest-key guess would
// point elsewhere.
var retiredKeys = map[reflect.Type]map[string]string{
	reflect.TypeFor[Gateway](): {
		"http1_fast_path": `the HTTP/1.1 fast path is on by default; write "disable_http1_fast_path: true" to serve HTTP/1.1 with net/http only`,
	},
}

func walkKeys(n *yamlv3.Node, t reflect.Type, path string) error {
	for n.Kind == yamlv3.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		if reflect.PointerTo(t.Elem()).Implements(jsonUnmarshaler) {
			return nil
		}
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(jsonUnmarshaler) {
		return nil // decodes itself (durations); its errors are its own
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yamlv3.MappingNode:
		fields := map[string]reflect.Type{}
		var known []string
		structKeys(t, fields, &known)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			ft, ok := fields[k]
			if !ok {
				slices.Sort(known)
				where := "top level"
				if path != "" {
					where = path
				}
				if instead, ok := retiredKeys[t][k]; ok {
					return fmt.Errorf("config: line %d: key %q in %s is no longer accepted: %s", n.Content[i].Line, k, where, instead)
				}
				if near := nearestKey(k, known); near != "" {
					return fmt.Errorf("config: line %d: unknown key %q in %s; did you mean %q? (known keys: %s)", n.Content[i].Line, k, where, near, strings.Join(known, ", "))
				}
				return fmt.Errorf("config: line %d: unknown key %q in %s (known keys: %s)", n.Content[i].Line, k, where, strings.Join(known, ", "))
			}
			if err := walkKeys(n.Content[i+1], ft, joinPath(path, k)); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Map && n.Kind == yamlv3.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := walkKeys(n.Content[i+1], t.Elem(), fmt.Sprintf("%s[%q]", path, n.Content[i].Value)); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Slice && n.Kind == yamlv3.SequenceNode:
		for i, c := range n.Content {
			if err := walkKeys(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// structKeys lists the keys encoding/json decodes into struct t: the
// fields' JSON names, and the fields of an embedded struct without a JSON
// name inline, as encoding/json promotes them.
func structKeys(t reflect.Type, fields map[string]reflect.Type, known *[]string) {
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				structKeys(ft, fields, known)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if _, dup := fields[name]; !dup {
			*known = append(*known, name)
		}
		fields[name] = f.Type
	}
}

func joinPath(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}
