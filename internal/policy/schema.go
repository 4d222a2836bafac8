package policy

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	yamlv3 "go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// pathElem is one step of a field path: a mapping key or a list index.
type pathElem struct {
	key   string
	idx   int
	isIdx bool
}

// fieldPath locates a value inside a document, printed like
// "spec.rules[0].from[1].source.principals[2]".
type fieldPath []pathElem

func (p fieldPath) key(k string) fieldPath {
	return append(p[:len(p):len(p)], pathElem{key: k})
}

func (p fieldPath) index(i int) fieldPath {
	return append(p[:len(p):len(p)], pathElem{idx: i, isIdx: true})
}

func (p fieldPath) String() string {
	var b strings.Builder
	for i, e := range p {
		switch {
		case e.isIdx:
			fmt.Fprintf(&b, "[%d]", e.idx)
		case isPlainKey(e.key):
			if i > 0 {
				b.WriteByte('.')
			}
			b.WriteString(e.key)
		default:
			// Map keys such as annotation names or ports: quoted in brackets.
			fmt.Fprintf(&b, "[%q]", e.key)
		}
	}
	return b.String()
}

func isPlainKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// lineOf finds the line of the value at p (or of its key, for unknown
// fields) in one YAML document that starts on line first of the input. It
// returns the deepest line it could reach, first when the document does
// not parse, so an error always points somewhere useful.
func lineOf(doc []byte, first int, p fieldPath, keyLine bool) int {
	var root yamlv3.Node
	if err := yamlv3.Unmarshal(doc, &root); err != nil || len(root.Content) == 0 {
		return first
	}
	n := root.Content[0]
	line := n.Line
	for i, e := range p {
		for n.Kind == yamlv3.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		last := i == len(p)-1
		switch {
		case e.isIdx && n.Kind == yamlv3.SequenceNode && e.idx < len(n.Content):
			n = n.Content[e.idx]
			line = n.Line
		case !e.isIdx && n.Kind == yamlv3.MappingNode:
			found := false
			for j := 0; j+1 < len(n.Content); j += 2 {
				if n.Content[j].Value == e.key {
					if last && keyLine {
						line = n.Content[j].Line
					} else {
						line = n.Content[j+1].Line
					}
					n = n.Content[j+1]
					found = true
					break
				}
			}
			if !found {
				return line + first - 1
			}
		default:
			return line + first - 1
		}
	}
	return line + first - 1
}

// checkSchema walks a decoded JSON value against a protobuf message
// descriptor before protojson sees it, so an error names the exact field
// path, and so the loader is as strict as Istio's CRD schema: field names
// in their JSON (lowerCamelCase) form only, enums by name, numbers where
// numbers belong and strings where strings belong.
func checkSchema(p fieldPath, v any, md protoreflect.MessageDescriptor) *fieldError {
	if v == nil {
		return nil
	}
	if md.FullName() == "google.protobuf.Duration" {
		s, ok := v.(string)
		if !ok {
			return errAt(p, "must be a duration string such as \"5s\", not %s", describeValue(v))
		}
		if _, err := time.ParseDuration(s); err != nil {
			return errAt(p, "must be a duration such as \"5s\" or \"10ms\", not %q", s)
		}
		return nil
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return errAt(p, "must be a mapping, not %s", describeValue(v))
	}
	fields := md.Fields()
	for _, k := range sortedKeys(obj) {
		fd := fields.ByJSONName(k)
		if fd == nil && k == "jwks_uri" {
			// The one alternative spelling Istio's CRD accepts.
			fd = fields.ByName("jwks_uri")
		}
		if fd == nil {
			known := make([]string, 0, fields.Len())
			for i := 0; i < fields.Len(); i++ {
				f := fields.Get(i)
				if !hiddenField(f) {
					known = append(known, f.JSONName())
				}
			}
			return unknownField(p.key(k), k, known)
		}
		if fe := checkEmpty(p.key(k), obj, k, fd); fe != nil {
			return fe
		}
		if fd.Message() != nil && fd.Message().FullName() == "google.protobuf.Duration" && !fd.IsList() {
			obj[k] = normalizeDuration(obj[k])
		}
		if fe := checkField(p.key(k), obj[k], fd); fe != nil {
			return fe
		}
	}
	return nil
}

// Where an explicitly empty list or mapping (or a null: a template that
// rendered nothing) would read as an absent field and so widen what a
// policy matches, the loader refuses it: protojson cannot tell "[]" from
// absent, so this is checked on the JSON. In Istio's words where Istio's
// validation refuses the same (ValidateAuthorizationPolicy,
// ValidatePeerAuthentication); Moatless is stricter for `when`, a list of
// a source, an operation or a condition beside another that is set,
// `targetRefs` and a JWT rule's `audiences`. A source, operation or
// condition whose lists are all empty is left to the compiler, which
// refuses it with Istio's message ("`from.source` must not be empty").
var (
	emptyRefused = map[protoreflect.FullName]string{
		"istio.security.v1beta1.Rule.from":                          "`from` must not be empty; leave it out to match any source, or list at least one",
		"istio.security.v1beta1.Rule.to":                            "`to` must not be empty; leave it out to match any operation, or list at least one",
		"istio.security.v1beta1.Rule.when":                          "`when` must not be empty; leave it out for a rule without conditions, or list at least one",
		"istio.security.v1beta1.AuthorizationPolicy.targetRefs":     "`targetRefs` must not be empty; leave it out to bind the policy by its selector, or name at least one target",
		"istio.security.v1beta1.RequestAuthentication.targetRefs":   "`targetRefs` must not be empty; leave it out to bind the policy by its selector, or name at least one target",
		"istio.security.v1beta1.PeerAuthentication.port_level_mtls": "port level mTLS, if defined, must have at least one element",
		"istio.security.v1beta1.JWTRule.audiences":                  "`audiences` must not be empty; leave it out to accept any audience, or list at least one",
	}
	// emptyBesideSibling are the messages whose lists are refused empty
	// when another list of the same message is set.
	emptyBesideSibling = map[protoreflect.FullName]bool{
		"istio.security.v1beta1.Source":    true,
		"istio.security.v1beta1.Operation": true,
		"istio.security.v1beta1.Condition": true,
	}
)

func checkEmpty(p fieldPath, obj map[string]any, key string, fd protoreflect.FieldDescriptor) *fieldError {
	if !(fd.IsList() || fd.IsMap()) || !isEmptyJSON(obj[key]) {
		return nil
	}
	if msg, ok := emptyRefused[fd.FullName()]; ok {
		return errAt(p, "%s", msg)
	}
	if !fd.IsList() || !emptyBesideSibling[fd.ContainingMessage().FullName()] {
		return nil
	}
	for k, v := range obj {
		if l, ok := v.([]any); ok && k != key && len(l) > 0 {
			return errAt(p, "`%s` must not be empty; leave it out, or list at least one value: an empty list would read as no constraint and widen the rule", key)
		}
	}
	return nil
}

// isEmptyJSON reports null, an empty list and an empty mapping.
func isEmptyJSON(v any) bool {
	switch t := v.(type) {
	case nil:
		return true
	case []any:
		return len(t) == 0
	case map[string]any:
		return len(t) == 0
	}
	return false
}

// hiddenField reports fields Istio hides from its documentation; they are
// accepted but not suggested.
func hiddenField(fd protoreflect.FieldDescriptor) bool {
	return fd.Name() == "target_ref"
}

func checkField(p fieldPath, v any, fd protoreflect.FieldDescriptor) *fieldError {
	if v == nil {
		return nil
	}
	switch {
	case fd.IsMap():
		m, ok := v.(map[string]any)
		if !ok {
			return errAt(p, "must be a mapping, not %s", describeValue(v))
		}
		for _, k := range sortedKeys(m) {
			switch fd.MapKey().Kind() {
			case protoreflect.Uint32Kind:
				n, err := strconv.ParseUint(k, 10, 32)
				if err != nil || n == 0 || n > 65535 {
					return &fieldError{path: p.key(k), msg: fmt.Sprintf("%q is not a port number (1-65535)", k), keyLine: true}
				}
			case protoreflect.StringKind:
			default:
				return errAt(p, "unsupported map key type %s", fd.MapKey().Kind())
			}
			if fe := checkValue(p.key(k), m[k], fd.MapValue()); fe != nil {
				return fe
			}
		}
		return nil
	case fd.IsList():
		l, ok := v.([]any)
		if !ok {
			return errAt(p, "must be a list, not %s (write [%s] for a list of one)", describeValue(v), yamlScalar(v))
		}
		for i, e := range l {
			if e == nil {
				return errAt(p.index(i), "must not be null")
			}
			if fe := checkValue(p.index(i), e, fd); fe != nil {
				return fe
			}
		}
		return nil
	}
	return checkValue(p, v, fd)
}

func yamlScalar(v any) string {
	switch t := v.(type) {
	case string:
		return strconv.Quote(t)
	case json.Number:
		return strconv.Quote(t.String())
	}
	return "..."
}

func checkValue(p fieldPath, v any, fd protoreflect.FieldDescriptor) *fieldError {
	if v == nil {
		return nil
	}
	switch fd.Kind() {
	case protoreflect.StringKind:
		if _, ok := v.(string); !ok {
			hint := ""
			switch v.(type) {
			case json.Number:
				hint = " (quote it: YAML reads an unquoted number as a number)"
			case bool:
				hint = " (quote it: YAML reads yes, no, on, off, true and false as booleans)"
			}
			return errAt(p, "must be a string, not %s%s", describeValue(v), hint)
		}
	case protoreflect.BoolKind:
		if _, ok := v.(bool); !ok {
			return errAt(p, "must be true or false, not %s", describeValue(v))
		}
	case protoreflect.Int32Kind, protoreflect.Int64Kind, protoreflect.Uint32Kind, protoreflect.Uint64Kind,
		protoreflect.Sint32Kind, protoreflect.Sint64Kind, protoreflect.Fixed32Kind, protoreflect.Fixed64Kind,
		protoreflect.Sfixed32Kind, protoreflect.Sfixed64Kind:
		n, ok := v.(json.Number)
		if !ok {
			return errAt(p, "must be a whole number, not %s", describeValue(v))
		}
		if _, err := strconv.ParseInt(n.String(), 10, 64); err != nil {
			return errAt(p, "must be a whole number, not %s", n)
		}
	case protoreflect.EnumKind:
		s, ok := v.(string)
		if !ok {
			return errAt(p, "must be one of %s, not %s", enumNames(fd.Enum()), describeValue(v))
		}
		if fd.Enum().Values().ByName(protoreflect.Name(s)) == nil {
			return errAt(p, "%q is not one of %s", s, enumNames(fd.Enum()))
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return checkSchema(p, v, fd.Message())
	default:
		return errAt(p, "unsupported field type %s", fd.Kind())
	}
	return nil
}

func enumNames(ed protoreflect.EnumDescriptor) string {
	vals := ed.Values()
	names := make([]string, vals.Len())
	for i := range names {
		names[i] = string(vals.Get(i).Name())
	}
	return strings.Join(names, ", ")
}

// unknownField builds the error for a field the schema does not have, with
// a suggestion when a known field is close (a typo or a wrong case).
func unknownField(p fieldPath, name string, known []string) *fieldError {
	msg := fmt.Sprintf("unknown field %q", name)
	best, bestDist := "", 3
	for _, k := range known {
		if strings.EqualFold(k, name) || strings.EqualFold(k, snakeToCamel(name)) {
			best, bestDist = k, 0
			break
		}
		if d := EditDistance(strings.ToLower(k), strings.ToLower(name)); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best != "" {
		msg += fmt.Sprintf("; did you mean %q?", best)
	} else if len(known) > 0 {
		msg += "; known fields: " + strings.Join(known, ", ")
	}
	return &fieldError{path: p, msg: msg, keyLine: true}
}

func snakeToCamel(s string) string {
	var b strings.Builder
	up := false
	for _, r := range s {
		if r == '_' {
			up = true
			continue
		}
		if up {
			b.WriteString(strings.ToUpper(string(r)))
			up = false
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// EditDistance is the Levenshtein distance, for "did you mean" hints
// (here and in package config); strings longer than 64 bytes are far from
// everything (1<<20), so a hostile key costs nothing.
func EditDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 20
	}
	return Levenshtein(a, b)
}

// Levenshtein is the edit distance between a and b, in bytes, with no
// length guard: O(len(a)·len(b)) time, so callers bound their inputs
// (the server's revoke hint compares SPIFFE IDs, which are at most 2,048
// bytes, against a bounded scan of known ones).
func Levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// normalizeDuration rewrites a Go-style duration string ("10ms", "1m30s",
// as Istio's CRD accepts them: its schema checks durations with CEL's
// duration()) into the form protojson reads ("0.010s"). Anything else is
// returned unchanged, for checkSchema and protojson to judge.
func normalizeDuration(v any) any {
	s, ok := v.(string)
	if !ok {
		return v
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return v
	}
	sign := ""
	if d < 0 {
		sign, d = "-", -d // -1<<63 ns does not parse: ParseDuration overflows first
	}
	return fmt.Sprintf("%s%d.%09ds", sign, d/time.Second, d%time.Second)
}
