// Package fieldcrypt encrypts the named fields of a JSON document (a
// social security number, a card number, a phone number) and leaves the
// rest readable, so records can be stored, logged and indexed without
// their personal data in the clear.
//
// Encryption goes through a Cipher: Transit, the transit API of a
// Moatless server (or of HashiCorp Vault), or any other implementation.
// Each encrypted field holds a transit ciphertext, "vault:v3:…", which
// names the key version that made it: the key rotates without a
// migration, old documents keep decrypting, and rewrapping them is
// optional.
//
//	e := fieldcrypt.Encrypter{Cipher: &fieldcrypt.Transit{Addr: "https://moatless:8443", Key: "pii", Client: c},
//		Fields: []string{"ssn", "card.number", "contacts[].phone"}}
//	sealed, err := e.Encrypt(ctx, doc)
//
// A field is named by its path: object keys joined with ".", and "[]"
// after a key for every element of an array. Fields that are absent are
// skipped. A field's whole JSON value (string, number, object, …) is
// encrypted, and restored with its type.
//
// With Context set (and a derived transit key), every ciphertext is bound
// to that context and to its field's path: a value copied into another
// field or another document does not decrypt there.
package fieldcrypt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Cipher encrypts and decrypts single values. context is nil unless the
// Encrypter has a Context.
type Cipher interface {
	Encrypt(ctx context.Context, plaintext, context []byte) (string, error)
	Decrypt(ctx context.Context, ciphertext string, context []byte) ([]byte, error)
}

// BatchCipher is a Cipher that handles many values in one call (one
// round trip per document); the Encrypter uses it when available.
type BatchCipher interface {
	Cipher
	EncryptBatch(ctx context.Context, plaintexts, contexts [][]byte) ([]string, error)
	DecryptBatch(ctx context.Context, ciphertexts []string, contexts [][]byte) ([][]byte, error)
}

// Prefix starts every encrypted field value.
const Prefix = "vault:v"

// Limits.
const (
	MaxDocument = 4 << 20
	MaxFields   = 256
	maxDepth    = 32
)

// ErrNotEncrypted is returned by Decrypt when a named field holds a value
// that is not a ciphertext (Strict only).
var ErrNotEncrypted = errors.New("fieldcrypt: field is not encrypted")

// Encrypter encrypts and decrypts the Fields of JSON documents. Its
// methods are safe for concurrent use when the Cipher is.
type Encrypter struct {
	Cipher Cipher
	Fields []string
	// Context binds ciphertexts to it and to their field path (needs a
	// derived key).
	Context []byte
	// Strict makes Decrypt fail on a named field that is present but not
	// encrypted, instead of leaving it as it is.
	Strict bool
}

type path []seg

type seg struct {
	key   string
	array bool
}

func parsePath(f string) (path, error) {
	if f == "" || len(f) > 512 {
		return nil, fmt.Errorf("fieldcrypt: field %q: want a dotted path", f)
	}
	var p path
	for _, part := range strings.Split(f, ".") {
		s := seg{key: part}
		if strings.HasSuffix(part, "[]") {
			s = seg{key: strings.TrimSuffix(part, "[]"), array: true}
		}
		if s.key == "" || strings.ContainsAny(s.key, "[]") {
			return nil, fmt.Errorf("fieldcrypt: field %q: empty or malformed segment %q", f, part)
		}
		p = append(p, s)
	}
	if len(p) > maxDepth {
		return nil, fmt.Errorf("fieldcrypt: field %q: deeper than %d", f, maxDepth)
	}
	return p, nil
}

// slot is one value to transform, with how to put the result back.
type slot struct {
	field string
	get   any
	set   func(any)
}

func collect(doc map[string]any, fields []string) ([]slot, error) {
	if len(fields) == 0 || len(fields) > MaxFields {
		return nil, fmt.Errorf("fieldcrypt: want 1 to %d fields", MaxFields)
	}
	var out []slot
	seen := map[string]bool{}
	for _, f := range fields {
		if seen[f] {
			return nil, fmt.Errorf("fieldcrypt: field %q listed twice", f)
		}
		seen[f] = true
		p, err := parsePath(f)
		if err != nil {
			return nil, err
		}
		walk(doc, p, f, &out)
	}
	return out, nil
}

func walk(obj map[string]any, p path, field string, out *[]slot) {
	s := p[0]
	v, ok := obj[s.key]
	if !ok || v == nil {
		return
	}
	last := len(p) == 1
	if s.array {
		arr, ok := v.([]any)
		if !ok {
			return
		}
		for i := range arr {
			if last {
				*out = append(*out, slot{field: field, get: arr[i], set: func(x any) { arr[i] = x }})
			} else if m, ok := arr[i].(map[string]any); ok {
				walk(m, p[1:], field, out)
			}
		}
		return
	}
	if last {
		*out = append(*out, slot{field: field, get: v, set: func(x any) { obj[s.key] = x }})
		return
	}
	if m, ok := v.(map[string]any); ok {
		walk(m, p[1:], field, out)
	}
}

func decode(doc []byte) (map[string]any, error) {
	if len(doc) > MaxDocument {
		return nil, fmt.Errorf("fieldcrypt: document larger than %d bytes", MaxDocument)
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber() // numbers keep their exact digits
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, fmt.Errorf("fieldcrypt: document is not a JSON object")
	}
	if dec.More() {
		return nil, fmt.Errorf("fieldcrypt: data after the JSON object")
	}
	return m, nil
}

func (e *Encrypter) contextFor(field string) []byte {
	if e.Context == nil {
		return nil
	}
	return append(append(append([]byte(nil), e.Context...), 0), field...)
}

// Encrypt returns doc with its fields encrypted. Fields already holding a
// ciphertext are left alone, so Encrypt is idempotent.
func (e *Encrypter) Encrypt(ctx context.Context, doc []byte) ([]byte, error) {
	m, err := decode(doc)
	if err != nil {
		return nil, err
	}
	if err := e.EncryptMap(ctx, m); err != nil {
		return nil, err
	}
	return json.Marshal(m)
}

// EncryptMap encrypts the fields of a decoded document in place.
func (e *Encrypter) EncryptMap(ctx context.Context, m map[string]any) error {
	slots, err := collect(m, e.Fields)
	if err != nil {
		return err
	}
	var todo []slot
	var pts, cts [][]byte
	for _, s := range slots {
		if str, ok := s.get.(string); ok && strings.HasPrefix(str, Prefix) {
			continue
		}
		b, err := json.Marshal(s.get)
		if err != nil {
			return err
		}
		todo = append(todo, s)
		pts = append(pts, b)
		cts = append(cts, e.contextFor(s.field))
	}
	if len(todo) == 0 {
		return nil
	}
	var out []string
	if bc, ok := e.Cipher.(BatchCipher); ok {
		if out, err = bc.EncryptBatch(ctx, pts, cts); err != nil {
			return err
		}
		if len(out) != len(pts) {
			return errors.New("fieldcrypt: cipher returned a wrong number of ciphertexts")
		}
	} else {
		for i := range pts {
			c, err := e.Cipher.Encrypt(ctx, pts[i], cts[i])
			if err != nil {
				return fmt.Errorf("fieldcrypt: encrypt %s: %w", todo[i].field, err)
			}
			out = append(out, c)
		}
	}
	for i, s := range todo {
		s.set(out[i])
	}
	return nil
}

// Decrypt returns doc with its encrypted fields restored.
func (e *Encrypter) Decrypt(ctx context.Context, doc []byte) ([]byte, error) {
	m, err := decode(doc)
	if err != nil {
		return nil, err
	}
	if err := e.DecryptMap(ctx, m); err != nil {
		return nil, err
	}
	return json.Marshal(m)
}

// DecryptMap decrypts the fields of a decoded document in place.
func (e *Encrypter) DecryptMap(ctx context.Context, m map[string]any) error {
	slots, err := collect(m, e.Fields)
	if err != nil {
		return err
	}
	var todo []slot
	var cts []string
	var ctxs [][]byte
	for _, s := range slots {
		str, ok := s.get.(string)
		if !ok || !strings.HasPrefix(str, Prefix) {
			if e.Strict {
				return fmt.Errorf("%w: %s", ErrNotEncrypted, s.field)
			}
			continue
		}
		todo = append(todo, s)
		cts = append(cts, str)
		ctxs = append(ctxs, e.contextFor(s.field))
	}
	if len(todo) == 0 {
		return nil
	}
	var pts [][]byte
	if bc, ok := e.Cipher.(BatchCipher); ok {
		if pts, err = bc.DecryptBatch(ctx, cts, ctxs); err != nil {
			return err
		}
		if len(pts) != len(cts) {
			return errors.New("fieldcrypt: cipher returned a wrong number of plaintexts")
		}
	} else {
		for i := range cts {
			p, err := e.Cipher.Decrypt(ctx, cts[i], ctxs[i])
			if err != nil {
				return fmt.Errorf("fieldcrypt: decrypt %s: %w", todo[i].field, err)
			}
			pts = append(pts, p)
		}
	}
	for i, s := range todo {
		dec := json.NewDecoder(bytes.NewReader(pts[i]))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("fieldcrypt: field %s did not decrypt to a JSON value", s.field)
		}
		s.set(v)
	}
	return nil
}
