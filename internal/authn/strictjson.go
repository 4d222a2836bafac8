package authn

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// maxJSONDepth bounds nesting in token headers, claims and key sets. Real
// tokens nest two or three levels; the limit keeps a hostile document from
// costing stack and time.
const maxJSONDepth = 32

// smallObject is the member count up to which duplicates are found by a
// linear scan; larger objects switch to a map so a hostile document with
// thousands of members costs linear, not quadratic, time.
const smallObject = 16

var (
	errJSONNotObject = errors.New("not a single JSON object")
	errJSONDepth     = errors.New("JSON nested too deeply")
	errJSONUTF8      = errors.New("JSON is not valid UTF-8")
)

// duplicateKeyError names a repeated member (quoted, truncated).
type duplicateKeyError struct{ name string }

func (e *duplicateKeyError) Error() string { return "duplicate member " + quote(e.name) }

// checkStrictJSON verifies that data is exactly one JSON object, valid
// UTF-8, nested at most maxJSONDepth levels, with no object anywhere that
// repeats a member name (after unescaping, so "a" and "\u0061" are the
// same name). encoding/json silently keeps the last of duplicate members
// while other parsers keep the first; a document that two parsers read
// differently (RFC 8725 section 2.8, RFC 7519 section 4) is refused.
//
// Syntax is checked by json.Valid first; the walk below then only has to
// find member names in known-valid JSON, which it does without allocating
// for the usual small objects.
func checkStrictJSON(data []byte) error {
	if !utf8.Valid(data) {
		return errJSONUTF8
	}
	if !json.Valid(data) {
		return errJSONNotObject
	}
	data = bytes.TrimLeft(data, " \t\r\n")
	if len(data) == 0 || data[0] != '{' {
		return errJSONNotObject
	}
	type frame struct {
		object    bool
		expectKey bool
		start     int                 // this object's names begin at names[start]
		big       map[string]struct{} // set once the object outgrows smallObject
	}
	var stackBuf [8]frame
	stack := stackBuf[:0]
	var namesBuf [32][]byte
	names := namesBuf[:0]
	for i := 0; i < len(data); i++ {
		switch c := data[i]; c {
		case '{', '[':
			if len(stack) == maxJSONDepth {
				return errJSONDepth
			}
			stack = append(stack, frame{object: c == '{', expectKey: c == '{', start: len(names)})
		case '}', ']':
			top := stack[len(stack)-1]
			names = names[:top.start]
			stack = stack[:len(stack)-1]
		case ',':
			if top := &stack[len(stack)-1]; top.object {
				top.expectKey = true
			}
		case '"':
			start := i
			escaped := false
			for i++; data[i] != '"'; i++ {
				if data[i] == '\\' {
					escaped = true
					i++
				}
			}
			top := &stack[len(stack)-1]
			if !top.object || !top.expectKey {
				continue
			}
			top.expectKey = false
			name := data[start+1 : i]
			if escaped {
				var s string
				if err := json.Unmarshal(data[start:i+1], &s); err != nil {
					return errJSONNotObject
				}
				name = []byte(s)
			}
			if top.big != nil {
				if _, dup := top.big[string(name)]; dup {
					return &duplicateKeyError{name: string(name)}
				}
				top.big[string(name)] = struct{}{}
				continue
			}
			for _, n := range names[top.start:] {
				if bytes.Equal(n, name) {
					return &duplicateKeyError{name: string(name)}
				}
			}
			names = append(names, name)
			if len(names)-top.start > smallObject {
				top.big = make(map[string]struct{}, 2*smallObject)
				for _, n := range names[top.start:] {
					top.big[string(n)] = struct{}{}
				}
				names = names[:top.start]
			}
		}
	}
	return nil
}
