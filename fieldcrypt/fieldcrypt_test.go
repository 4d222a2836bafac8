package fieldcrypt_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moatless/moatless/fieldcrypt"
)

// fakeCipher is a reversible stand-in for transit: it marks values so the
// test can see what was encrypted, and checks contexts.
type fakeCipher struct{ calls int }

func (c *fakeCipher) Encrypt(_ context.Context, pt, ctx []byte) (string, error) {
	c.calls++
	return "vault:v1:" + base64.StdEncoding.EncodeToString(append(append(ctx, '|'), pt...)), nil
}

func (c *fakeCipher) Decrypt(_ context.Context, ct string, ctx []byte) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(ct, "vault:v1:"))
	if err != nil {
		return nil, err
	}
	gotCtx, pt, _ := strings.Cut(string(raw), "|")
	if gotCtx != string(ctx) {
		return nil, errors.New("context mismatch")
	}
	return []byte(pt), nil
}

const doc = `{"id": 42, "name": "Ada", "ssn": "123-45-6789", "card": {"number": "4111111111111111", "exp": "12/30"},
 "contacts": [{"phone": "+1 555 0100", "kind": "home"}, {"phone": "+1 555 0199"}], "score": 12345678901234567890}`

func TestEncryptDecryptRoundTrip(t *testing.T) {
	c := &fakeCipher{}
	e := fieldcrypt.Encrypter{Cipher: c, Fields: []string{"ssn", "card.number", "contacts[].phone", "missing", "score"}}
	enc, err := e.Encrypt(context.Background(), []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"123-45-6789", "4111111111111111", "555 0100", "12345678901234567890"} {
		if strings.Contains(string(enc), secret) {
			t.Fatalf("%q left in the clear: %s", secret, enc)
		}
	}
	for _, clear := range []string{`"name":"Ada"`, `"exp":"12/30"`, `"kind":"home"`, `"id":42`} {
		if !strings.Contains(string(enc), clear) {
			t.Fatalf("%s not kept readable: %s", clear, enc)
		}
	}
	again, err := e.Encrypt(context.Background(), enc)
	if err != nil || string(again) != string(enc) {
		t.Fatal("Encrypt is not idempotent on an encrypted document")
	}
	dec, err := e.Decrypt(context.Background(), enc)
	if err != nil {
		t.Fatal(err)
	}
	var want, got map[string]any
	json.Unmarshal([]byte(doc), &want)
	json.Unmarshal(dec, &got)
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("round trip (-want +got):\n%s", d)
	}
	if !strings.Contains(string(dec), "12345678901234567890") {
		t.Fatal("large number lost its digits")
	}
}

func TestContextBindsFieldAndDocument(t *testing.T) {
	c := &fakeCipher{}
	e := fieldcrypt.Encrypter{Cipher: c, Fields: []string{"ssn", "phone"}, Context: []byte("customer-42")}
	enc, err := e.Encrypt(context.Background(), []byte(`{"ssn":"1","phone":"2"}`))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	json.Unmarshal(enc, &m)
	m["phone"], m["ssn"] = m["ssn"], m["phone"] // swap the ciphertexts
	swapped, _ := json.Marshal(m)
	if _, err := e.Decrypt(context.Background(), swapped); err == nil {
		t.Fatal("a ciphertext moved to another field decrypted")
	}
	other := e
	other.Context = []byte("customer-43")
	if _, err := other.Decrypt(context.Background(), enc); err == nil {
		t.Fatal("a ciphertext decrypted under another document's context")
	}
}

func TestErrors(t *testing.T) {
	c := &fakeCipher{}
	tests := []struct {
		name   string
		fields []string
		doc    string
		strict bool
	}{
		{"not_an_object", []string{"a"}, `[1,2]`, false},
		{"trailing_data", []string{"a"}, `{"a":1} {}`, false},
		{"no_fields", nil, `{"a":1}`, false},
		{"bad_path", []string{"a..b"}, `{"a":1}`, false},
		{"duplicate_field", []string{"a", "a"}, `{"a":1}`, false},
		{"strict_plaintext", []string{"a"}, `{"a":"clear"}`, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := fieldcrypt.Encrypter{Cipher: c, Fields: tc.fields, Strict: tc.strict}
			if _, err := e.Decrypt(context.Background(), []byte(tc.doc)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func FuzzEncrypter(f *testing.F) {
	f.Add(doc, "ssn,card.number,contacts[].phone")
	f.Add(`{"a":{"b":[{"c":1}]}}`, "a.b[].c")
	f.Fuzz(func(t *testing.T, d, fields string) {
		e := fieldcrypt.Encrypter{Cipher: &fakeCipher{}, Fields: strings.Split(fields, ",")}
		enc, err := e.Encrypt(context.Background(), []byte(d))
		if err != nil {
			return
		}
		dec, err := e.Decrypt(context.Background(), enc)
		if err != nil {
			t.Fatalf("decrypt of own output: %v", err)
		}
		var a, b any
		if json.Unmarshal([]byte(d), &a) != nil || json.Unmarshal(dec, &b) != nil {
			return
		}
		if d := cmp.Diff(a, b); d != "" && !strings.Contains(d, "vault:v") {
			t.Fatalf("round trip differs:\n%s", d)
		}
	})
}
