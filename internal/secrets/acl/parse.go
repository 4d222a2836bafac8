package acl

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"sigs.k8s.io/yaml"
)

// ParseDocument reads a policy from YAML or JSON in this package's shape
// (name, description, subjects, paths), from Vault's JSON policy shape
// ({"path": {"secret/*": {"capabilities": [...]}}}), or from Vault's HCL
// policy syntax (see ParseHCL for the subset). name, when not empty,
// names the policy (and must agree with a name in the document); HCL and
// Vault JSON carry no name or subjects, so they need it. The result is
// validated and canonical.
func ParseDocument(name string, b []byte) (Policy, error) {
	var p Policy
	if len(b) > MaxPolicySize {
		return p, fmt.Errorf("policy larger than %d bytes", MaxPolicySize)
	}
	if !utf8.Valid(b) {
		return p, errors.New("policy is not UTF-8 text")
	}
	trimmed := bytes.TrimSpace(b)
	switch {
	case len(trimmed) == 0:
		return p, errors.New("empty policy")
	case looksHCL(trimmed):
		rules, err := ParseHCL(string(b))
		if err != nil {
			return p, err
		}
		p.Paths = rules
	case trimmed[0] == '{' && isVaultJSON(trimmed):
		rules, err := parseVaultJSON(trimmed)
		if err != nil {
			return p, err
		}
		p.Paths = rules
	default:
		if err := yaml.UnmarshalStrict(b, &p); err != nil {
			return p, fmt.Errorf("policy: %v", strings.TrimPrefix(err.Error(), "error unmarshaling JSON: while decoding JSON: json: "))
		}
	}
	switch {
	case name != "" && p.Name != "" && p.Name != name:
		return p, fmt.Errorf("the document is named %q, not %q", p.Name, name)
	case name != "":
		p.Name = name
	case p.Name == "":
		return p, errors.New("name: required (in the document, or given with the request)")
	}
	if err := p.Validate(); err != nil {
		return p, err
	}
	return p, nil
}

// looksHCL: the first token (after comments) is the identifier "path".
func looksHCL(b []byte) bool {
	l := &lexer{src: string(b)}
	t, err := l.next()
	return err == nil && t.kind == tIdent && t.text == "path"
}

func isVaultJSON(b []byte) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(b, &m) != nil {
		return false
	}
	_, ok := m["path"]
	return ok && len(m) == 1
}

func parseVaultJSON(b []byte) ([]Rule, error) {
	var m struct {
		Path map[string]json.RawMessage `json:"path"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("policy: %v", err)
	}
	var out []Rule
	for p, raw := range m.Path {
		var body struct {
			Capabilities []string `json:"capabilities"`
		}
		d := json.NewDecoder(bytes.NewReader(raw))
		d.DisallowUnknownFields()
		if err := d.Decode(&body); err != nil {
			return nil, fmt.Errorf("path %q: %v (only capabilities is supported)", p, err)
		}
		out = append(out, Rule{Path: p, Capabilities: body.Capabilities})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// HCL renders rules in Vault's HCL policy syntax (what
// GET /v1/sys/policies/acl/NAME returns as "policy").
func HCL(rules []Rule) string {
	var b strings.Builder
	for i, r := range rules {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "path %s {\n  capabilities = [", strconv.Quote(r.Path))
		for j, c := range r.Capabilities {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString(strconv.Quote(c))
		}
		b.WriteString("]\n}\n")
	}
	return b.String()
}

// ParseHCL parses the subset of Vault's HCL policy syntax that grants
// capabilities:
//
//	# comment, // comment, /* comment */
//	path "secret/data/app/*" {
//	  capabilities = ["read", "list"]
//	}
//
// Anything else (allowed_parameters, denied_parameters,
// required_parameters, min/max_wrapping_ttl, the legacy policy = "..."
// form, heredocs) is refused with an error naming it and its line,
// rather than silently ignored: a parameter constraint the server does
// not enforce would grant more than the author meant.
func ParseHCL(src string) ([]Rule, error) {
	if len(src) > MaxPolicySize {
		return nil, fmt.Errorf("policy larger than %d bytes", MaxPolicySize)
	}
	l := &lexer{src: src, line: 1}
	var out []Rule
	for {
		t, err := l.next()
		if err != nil {
			return nil, err
		}
		if t.kind == tEOF {
			break
		}
		if t.kind != tIdent || t.text != "path" {
			return nil, fmt.Errorf("line %d: expected path \"...\" { ... }, found %s", t.line, t.desc())
		}
		pt, err := l.expect(tString, "a quoted path")
		if err != nil {
			return nil, err
		}
		if _, err := l.expect(tLBrace, "{"); err != nil {
			return nil, err
		}
		r := Rule{Path: pt.text}
		var sawCaps bool
		for {
			t, err := l.next()
			if err != nil {
				return nil, err
			}
			if t.kind == tRBrace {
				break
			}
			if t.kind != tIdent {
				return nil, fmt.Errorf("line %d: expected capabilities = [...] or }, found %s", t.line, t.desc())
			}
			if t.text != "capabilities" {
				return nil, fmt.Errorf("line %d: %q is not supported (only capabilities; see docs/secrets.md)", t.line, t.text)
			}
			if sawCaps {
				return nil, fmt.Errorf("line %d: capabilities given twice for path %q", t.line, r.Path)
			}
			sawCaps = true
			if _, err := l.expect(tEquals, "="); err != nil {
				return nil, err
			}
			if _, err := l.expect(tLBracket, "["); err != nil {
				return nil, err
			}
			r.Capabilities = []string{}
			for {
				t, err := l.next()
				if err != nil {
					return nil, err
				}
				if t.kind == tRBracket {
					break
				}
				if t.kind != tString {
					return nil, fmt.Errorf("line %d: expected a quoted capability or ], found %s", t.line, t.desc())
				}
				r.Capabilities = append(r.Capabilities, t.text)
				if len(r.Capabilities) > 16 {
					return nil, fmt.Errorf("line %d: too many capabilities", t.line)
				}
				t, err = l.next()
				if err != nil {
					return nil, err
				}
				if t.kind == tRBracket {
					break
				}
				if t.kind != tComma {
					return nil, fmt.Errorf("line %d: expected , or ], found %s", t.line, t.desc())
				}
			}
		}
		if !sawCaps {
			return nil, fmt.Errorf("path %q: capabilities: required", r.Path)
		}
		out = append(out, r)
		if len(out) > MaxRules {
			return nil, fmt.Errorf("more than %d path rules", MaxRules)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("policy has no path rules")
	}
	return out, nil
}

type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tString
	tLBrace
	tRBrace
	tLBracket
	tRBracket
	tEquals
	tComma
)

type token struct {
	kind tokKind
	text string
	line int
}

func (t token) desc() string {
	switch t.kind {
	case tEOF:
		return "end of input"
	case tIdent:
		return strconv.Quote(t.text)
	case tString:
		return "string " + strconv.Quote(t.text)
	}
	return strconv.Quote(t.text)
}

type lexer struct {
	src  string
	pos  int
	line int
}

func (l *lexer) expect(k tokKind, what string) (token, error) {
	t, err := l.next()
	if err != nil {
		return t, err
	}
	if t.kind != k {
		return t, fmt.Errorf("line %d: expected %s, found %s", t.line, what, t.desc())
	}
	return t, nil
}

func (l *lexer) next() (token, error) {
	if l.line == 0 {
		l.line = 1
	}
	for l.pos < len(l.src) {
		c := l.src[l.pos]
		switch {
		case c == '\n':
			l.line++
			l.pos++
		case c == ' ' || c == '\t' || c == '\r':
			l.pos++
		case c == '#' || strings.HasPrefix(l.src[l.pos:], "//"):
			for l.pos < len(l.src) && l.src[l.pos] != '\n' {
				l.pos++
			}
		case strings.HasPrefix(l.src[l.pos:], "/*"):
			end := strings.Index(l.src[l.pos+2:], "*/")
			if end < 0 {
				return token{}, fmt.Errorf("line %d: unterminated /* comment", l.line)
			}
			l.line += strings.Count(l.src[l.pos:l.pos+2+end], "\n")
			l.pos += end + 4
		default:
			return l.token()
		}
	}
	return token{kind: tEOF, line: l.line}, nil
}

func (l *lexer) token() (token, error) {
	c := l.src[l.pos]
	line := l.line
	single := map[byte]tokKind{'{': tLBrace, '}': tRBrace, '[': tLBracket, ']': tRBracket, '=': tEquals, ',': tComma}
	if k, ok := single[c]; ok {
		l.pos++
		return token{kind: k, text: string(c), line: line}, nil
	}
	if c == '"' {
		var b strings.Builder
		i := l.pos + 1
		for {
			if i >= len(l.src) || l.src[i] == '\n' {
				return token{}, fmt.Errorf("line %d: unterminated string", line)
			}
			ch := l.src[i]
			if ch == '"' {
				l.pos = i + 1
				return token{kind: tString, text: b.String(), line: line}, nil
			}
			if ch == '\\' {
				if i+1 >= len(l.src) {
					return token{}, fmt.Errorf("line %d: unterminated string", line)
				}
				switch l.src[i+1] {
				case '"', '\\':
					b.WriteByte(l.src[i+1])
				case 'n':
					b.WriteByte('\n')
				case 't':
					b.WriteByte('\t')
				default:
					return token{}, fmt.Errorf("line %d: unsupported escape \\%c in string", line, l.src[i+1])
				}
				i += 2
				continue
			}
			if ch == '$' && i+1 < len(l.src) && l.src[i+1] == '{' {
				return token{}, fmt.Errorf("line %d: templated policies (${...}) are not supported", line)
			}
			b.WriteByte(ch)
			i++
		}
	}
	if isIdentStart(c) {
		i := l.pos
		for i < len(l.src) && (isIdentStart(l.src[i]) || l.src[i] >= '0' && l.src[i] <= '9' || l.src[i] == '-') {
			i++
		}
		t := token{kind: tIdent, text: l.src[l.pos:i], line: line}
		l.pos = i
		return t, nil
	}
	if strings.HasPrefix(l.src[l.pos:], "<<") {
		return token{}, fmt.Errorf("line %d: heredocs are not supported", line)
	}
	r, _ := utf8.DecodeRuneInString(l.src[l.pos:])
	return token{}, fmt.Errorf("line %d: unexpected character %q", line, r)
}

func isIdentStart(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' }
