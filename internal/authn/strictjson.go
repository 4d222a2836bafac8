package authn

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// maxJSONDepth bounds nesting in token headers, claims and key sets. Real
// tokens nest two or three levels; the limit keeps a hostile document from
// costing stack and time.
const maxJSONDepth = 32

var (
	errJSONNotObject = errors.New("not a JSON object")
	errJSONDepth     = errors.New("JSON nested too deeply")
	errJSONUTF8      = errors.New("JSON is not valid UTF-8")
	errJSONTrailing  = errors.New("data after the JSON object")
)

// duplicateKeyError names a repeated member (quoted, truncated).
type duplicateKeyError struct{ name string }

func (e *duplicateKeyError) Error() string { return "duplicate member " + quote(e.name) }

// checkStrictJSON verifies that data is exactly one JSON object, valid
// UTF-8, nested at most maxJSONDepth levels, with no object anywhere that
// repeats a member name. encoding/json silently keeps the last of
// duplicate members while other parsers keep the first; a token whose
// claims two parsers read differently (RFC 8725 section 2.8, RFC 7519
// section 4) is refused instead.
func checkStrictJSON(data []byte) error {
	if !utf8.Valid(data) {
		return errJSONUTF8
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // numbers as text: no float conversion work here
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%w: %v", errJSONNotObject, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errJSONNotObject
	}
	stack := []jsonFrame{{names: map[string]struct{}{}, object: true, expectKey: true}}
	for len(stack) > 0 {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("%w: %v", errJSONNotObject, err)
		}
		top := &stack[len(stack)-1]
		if top.object && top.expectKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				if len(stack) > 0 {
					valueDone(stack)
				}
				continue
			}
			name, ok := tok.(string)
			if !ok {
				return errJSONNotObject
			}
			if _, dup := top.names[name]; dup {
				return &duplicateKeyError{name: name}
			}
			top.names[name] = struct{}{}
			top.expectKey = false
			continue
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				if len(stack) >= maxJSONDepth {
					return errJSONDepth
				}
				f := jsonFrame{object: t == '{', expectKey: t == '{'}
				if f.object {
					f.names = map[string]struct{}{}
				}
				stack = append(stack, f)
			case ']':
				stack = stack[:len(stack)-1]
				if len(stack) > 0 {
					valueDone(stack)
				}
			default: // '}' where a value was expected cannot come from Token
				return errJSONNotObject
			}
		default:
			valueDone(stack)
		}
	}
	if _, err := dec.Token(); err != io.EOF {
		return errJSONTrailing
	}
	return nil
}

// jsonFrame is one open container: objects track their member names and
// whether the next token is a name.
type jsonFrame struct {
	names     map[string]struct{}
	object    bool
	expectKey bool
}

// valueDone records that the innermost container got a complete value:
// an object then expects its next member name.
func valueDone(stack []jsonFrame) {
	if top := &stack[len(stack)-1]; top.object {
		top.expectKey = true
	}
}
