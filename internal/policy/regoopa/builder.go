package regoopa

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"

	"github.com/open-policy-agent/opa/v1/ast"
)

// builder makes input documents as OPA's AST values: a query takes them
// as they are (EvalParsedInput), without converting Go values on every
// evaluation. Values are *ast.Term; objects ast.Object.
type builder struct{}

// keyTerms are the input document's own keys (package policy's input.go
// lists them) as terms, made once: terms are immutable, and a request
// then allocates only for its values.
var keyTerms = func() map[string]*ast.Term {
	m := map[string]*ast.Term{}
	for _, k := range []string{"source", "destination", "request", "connection", "auth", "time", "attributes",
		"principal", "spiffe_id", "trust_domain", "namespace", "service_account", "ip", "remote_ip",
		"labels", "port", "protocol", "method", "path", "query", "host", "headers", "sni",
		"audiences", "presenter", "claims", "unix", "unix_ns", "rfc3339", "year", "month", "day",
		"hour", "minute", "weekday"} {
		m[k] = ast.StringTerm(k)
	}
	return m
}()

func keyTerm(k string) *ast.Term {
	if kt := keyTerms[k]; kt != nil {
		return kt
	}
	return ast.StringTerm(k)
}

// term is v as a term: a term as it is, an object in a new term.
func term(v any) *ast.Term {
	switch t := v.(type) {
	case *ast.Term:
		return t
	case ast.Value:
		return ast.NewTerm(t)
	}
	panic("regoopa: not a value of this builder")
}

// value is v (an input from NewObject, or a term) as an AST value.
func value(v any) ast.Value {
	switch t := v.(type) {
	case nil:
		return nil
	case *ast.Term:
		return t.Value
	case ast.Value:
		return t
	}
	panic("regoopa: not a value of this builder")
}

func (builder) NewObject(n int) any               { return ast.NewObjectWithCapacity(n) }
func (builder) Put(obj any, key string, v any)    { obj.(ast.Object).Insert(keyTerm(key), term(v)) }
func (builder) String(s string) any               { return ast.StringTerm(s) }
func (builder) Int(n int) any                     { return ast.InternedTerm(n) }
func (builder) Number(text string) any            { return ast.NumberTerm(json.Number(text)) }
func (builder) Bool(b bool) any                   { return ast.BooleanTerm(b) }
func (builder) JSON(v any) (any, error)           { return ast.JSON(value(v)) }
func (builder) Digest(v any) string               { return digest(value(v)) }
func (builder) JSONValue(v any) (any, bool)       { return jsonValue(v) }
func (builder) Lookup(obj any, p any) (any, bool) { return lookup(obj.(ast.Object), p.([]*ast.Term)) }
func (builder) Set(obj any, p any, v any)         { set(obj.(ast.Object), p.([]*ast.Term), term(v)) }

func (builder) Path(keys []string) any {
	out := make([]*ast.Term, len(keys))
	for i, k := range keys {
		out[i] = keyTerm(k)
	}
	return out
}

func (builder) Strings(ss []string) any {
	ts := make([]*ast.Term, len(ss))
	for i, s := range ss {
		ts[i] = ast.StringTerm(s)
	}
	return ast.ArrayTerm(ts...)
}

func jsonValue(v any) (any, bool) {
	x, err := ast.InterfaceToValue(v)
	if err != nil {
		return nil, false
	}
	return ast.NewTerm(x), true
}

// lookup follows path through nested objects.
func lookup(o ast.Object, path []*ast.Term) (any, bool) {
	var cur ast.Value = o
	var t *ast.Term
	for _, k := range path {
		obj, ok := cur.(ast.Object)
		if !ok {
			return nil, false
		}
		if t = obj.Get(k); t == nil {
			return nil, false
		}
		cur = t.Value
	}
	return t, t != nil
}

// set puts v at path, creating objects on the way (a non-object on the
// way is replaced: mappings own their targets).
func set(o ast.Object, path []*ast.Term, v *ast.Term) {
	cur := o
	for _, key := range path[:len(path)-1] {
		next, ok := func() (ast.Object, bool) {
			if t := cur.Get(key); t != nil {
				obj, ok := t.Value.(ast.Object)
				return obj, ok
			}
			return nil, false
		}()
		if !ok {
			next = ast.NewObject()
			cur.Insert(key, ast.NewTerm(next))
		}
		cur = next
	}
	cur.Insert(path[len(path)-1], v)
}

// digest is the hex SHA-256 of an unambiguous encoding of the input
// (appendValue).
func digest(in ast.Value) string {
	buf := make([]byte, 0, 1024)
	buf = appendValue(buf, in)
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:])
}

// appendValue encodes v unambiguously: a type byte, strings and numbers
// length-prefixed, arrays and objects counted, object keys in OPA's
// sorted order. Cheaper than rendering the value as text.
func appendValue(buf []byte, v ast.Value) []byte {
	switch t := v.(type) {
	case ast.String:
		return appendLP(buf, 's', string(t))
	case ast.Number:
		return appendLP(buf, 'n', string(t))
	case ast.Boolean:
		if t {
			return append(buf, 't')
		}
		return append(buf, 'f')
	case ast.Null:
		return append(buf, 'z')
	case *ast.Array:
		buf = binary.AppendUvarint(append(buf, 'a'), uint64(t.Len()))
		for i := 0; i < t.Len(); i++ {
			buf = appendValue(buf, t.Elem(i).Value)
		}
		return buf
	case ast.Object:
		buf = binary.AppendUvarint(append(buf, 'o'), uint64(t.Len()))
		for _, k := range t.Keys() {
			buf = appendValue(buf, k.Value)
			buf = appendValue(buf, t.Get(k).Value)
		}
		return buf
	}
	return appendLP(buf, 'x', v.String()) // sets and refs do not occur in inputs
}

func appendLP(buf []byte, tag byte, s string) []byte {
	buf = append(buf, tag)
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}
