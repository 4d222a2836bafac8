package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"

	"github.com/moatless/moatless/internal/policy"
)

// decodeError turns what sigs.k8s.io/yaml reports while decoding a config
// (in JSON's words: "error unmarshaling JSON: while decoding JSON: json:
// cannot unmarshal string into Go struct field Inbound.inbound.port of
// type int") into the file's own terms: the line, the field path with its
// indexes, what the field wants and what the YAML holds there.
func decodeError(b []byte, err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		var root yamlv3.Node
		if yamlv3.Unmarshal(b, &root) == nil && len(root.Content) > 0 {
			segs := strings.Split(te.Field, ".")
			line, path := findField(root.Content[0], segs, "", te.Value)
			if line == 0 {
				// YAML 1.1 words (yes, on) are booleans to the decoder
				// but strings to yaml.v3: take the first node on the path.
				line, path = findField(root.Content[0], segs, "", "")
			}
			if line > 0 {
				return fmt.Errorf("config: line %d: %s: want %s, not a YAML %s", line, path, describeType(te.Type), yamlKind(te.Value))
			}
		}
		return fmt.Errorf("config: %s: want %s, not a YAML %s", te.Field, describeType(te.Type), yamlKind(te.Value))
	}
	msg := err.Error()
	for _, p := range []string{"error unmarshaling JSON: ", "while decoding JSON: ", "json: "} {
		msg = strings.TrimPrefix(msg, p)
	}
	if m, ok := strings.CutPrefix(msg, "error converting YAML to JSON: "); ok {
		return fmt.Errorf("config: YAML: %s", strings.TrimPrefix(m, "yaml: "))
	}
	return fmt.Errorf("config: %s", msg)
}

// findField finds the YAML node at a json.UnmarshalTypeError's field path
// (struct keys only: the decoder leaves out list indexes and map keys, so
// a list or a map level tries each of its elements) and returns its line
// and the path with the indexes and keys put back. Among several nodes on
// the path, the first whose kind is the wrong one (want, JSON's word for
// what the YAML holds) wins; want "" takes the first.
func findField(n *yamlv3.Node, segs []string, path string, want string) (int, string) {
	if n.Kind == yamlv3.AliasNode {
		// Not followed: aliases of aliases would make this walk
		// exponential in the file's size. The error keeps its path.
		return 0, ""
	}
	if len(segs) == 0 {
		if want == "" || yamlKind(want) == nodeKind(n) {
			return n.Line, path
		}
		return 0, ""
	}
	switch n.Kind {
	case yamlv3.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == segs[0] {
				if line, p := findField(n.Content[i+1], segs[1:], joinPath(path, segs[0]), want); line > 0 {
					return line, p
				}
			}
		}
		// A Go map: its keys are not in the path.
		for i := 0; i+1 < len(n.Content); i += 2 {
			if line, p := findField(n.Content[i+1], segs, fmt.Sprintf("%s[%q]", path, n.Content[i].Value), want); line > 0 {
				return line, p
			}
		}
	case yamlv3.SequenceNode:
		for i, c := range n.Content {
			if line, p := findField(c, segs, fmt.Sprintf("%s[%d]", path, i), want); line > 0 {
				return line, p
			}
		}
	}
	return 0, ""
}

// yamlKind names a JSON value kind (json.UnmarshalTypeError.Value) as YAML
// does.
func yamlKind(v string) string {
	switch v {
	case "object":
		return "mapping"
	case "array":
		return "list"
	case "bool":
		return "boolean"
	}
	return v
}

// nodeKind is the yamlKind of a node.
func nodeKind(n *yamlv3.Node) string {
	switch n.Kind {
	case yamlv3.MappingNode:
		return "mapping"
	case yamlv3.SequenceNode:
		return "list"
	}
	switch n.ShortTag() {
	case "!!int", "!!float":
		return "number"
	case "!!bool":
		return "boolean"
	case "!!null":
		return "null"
	}
	return "string"
}

// describeType says what a Go type wants, in a config author's words.
func describeType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping"
	}
	return t.String()
}

// nearestKey is the known key a mistyped one most likely meant: the
// closest by edit distance, ignoring case, "_" and "-" (so stateDir and
// state-dir find state_dir), within a third of its length; "" if none is
// that close.
func nearestKey(k string, known []string) string {
	norm := func(s string) string {
		return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(s))
	}
	nk := norm(k)
	best, bestD := "", max(1, len(nk)/3)+1
	for _, c := range known {
		if d := policy.EditDistance(nk, norm(c)); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// lineError puts the line of a validation error's field into its
// message ("config: inbound[0].listen: ..." becomes "config: line 7:
// inbound[0].listen: ..."), keeping the error it wraps.
type lineError struct {
	line int
	err  error
}

func (e *lineError) Error() string {
	return strings.Replace(e.err.Error(), "config: ", fmt.Sprintf("config: line %d: ", e.line), 1)
}

func (e *lineError) Unwrap() error { return e.err }

// withLines gives each "config: PATH: ..." error of err (one, or several
// joined, as Validate returns them) the line of PATH in the YAML b; errors
// whose path is not in the file (a default, or several fields) stay as
// they are.
func withLines(b []byte, err error) error {
	var root yamlv3.Node
	if err == nil || yamlv3.Unmarshal(b, &root) != nil || len(root.Content) == 0 {
		return err
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	out := make([]error, 0, len(errs))
	for _, e := range errs {
		rest, ok := strings.CutPrefix(e.Error(), "config: ")
		path, _, ok2 := strings.Cut(rest, ": ")
		if ok && ok2 {
			if line := lineOfPath(root.Content[0], path); line > 0 {
				e = &lineError{line: line, err: e}
			}
		}
		out = append(out, e)
	}
	if len(out) == 1 {
		return out[0]
	}
	return errors.Join(out...)
}

// lineOfPath is the line of the node at a field path as Validate writes
// it (identity.join.token_file, inbound[0].listen, routes["api"].path),
// 0 when the file does not have it.
func lineOfPath(n *yamlv3.Node, path string) int {
	for path != "" {
		if n.Kind == yamlv3.AliasNode {
			return 0 // not followed, as in findField
		}
		var key string
		index := -1
		switch {
		case path[0] == '.':
			path = path[1:]
			continue
		case strings.HasPrefix(path, `["`):
			end := strings.Index(path[2:], `"]`)
			if end < 0 {
				return 0
			}
			key, path = path[2:2+end], path[2+end+2:]
		case path[0] == '[':
			end := strings.IndexByte(path, ']')
			if end < 0 {
				return 0
			}
			i, err := strconv.Atoi(path[1:end])
			if err != nil {
				return 0
			}
			index, path = i, path[end+1:]
		default:
			end := strings.IndexAny(path, ".[")
			if end < 0 {
				end = len(path)
			}
			key, path = path[:end], path[end:]
			if strings.ContainsAny(key, " ,") {
				return 0 // "inbound, outbound": not one field
			}
		}
		var next *yamlv3.Node
		switch {
		case index >= 0 && n.Kind == yamlv3.SequenceNode && index < len(n.Content):
			next = n.Content[index]
		case index < 0 && n.Kind == yamlv3.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == key {
					next = n.Content[i+1]
					if path == "" {
						return n.Content[i].Line
					}
				}
			}
		}
		if next == nil {
			return 0
		}
		n = next
	}
	return n.Line
}
