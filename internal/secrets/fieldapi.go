package secrets

import (
	"context"
	"net/http"
	"strings"

	"github.com/moatless/moatless/fieldcrypt"
	"github.com/moatless/moatless/internal/secrets/acl"
	"github.com/moatless/moatless/internal/secrets/transit"
)

// keyCipher adapts a transit key to fieldcrypt.Cipher, in process.
type keyCipher struct{ k *transit.Key }

func (c keyCipher) Encrypt(_ context.Context, pt, ctx []byte) (string, error) {
	return c.k.Encrypt(pt, ctx, 0)
}
func (c keyCipher) Decrypt(_ context.Context, ct string, ctx []byte) ([]byte, error) {
	pt, _, err := c.k.Decrypt(ct, ctx)
	return pt, err
}

// fieldAPI serves POST fieldcrypt/encrypt/KEY and fieldcrypt/decrypt/KEY:
// {"document": {...}, "fields": ["ssn", "card.number"], "context": BASE64}
// answers {"document": {...}} with those fields encrypted (or decrypted)
// by the transit key KEY and the rest untouched.
func (s *Service) fieldAPI(rq *req, rest string) (*envelope, error) {
	op, name, _ := strings.Cut(rest, "/")
	if (op != "encrypt" && op != "decrypt") || !acl.ValidName(name) {
		return nil, rq.noRoute()
	}
	if rq.op != "update" {
		return nil, errf(http.StatusMethodNotAllowed, "%s is POST", rq.path)
	}
	if err := rq.need(acl.Update); err != nil {
		return nil, err
	}
	raw := rq.body.raw("document")
	fields := rq.body.strList("fields")
	ctxb := rq.body.b64("context", false)
	strict := rq.body.boolean("strict")
	if err := rq.body.done(); err != nil {
		return nil, err
	}
	var doc map[string]any
	if raw == nil || len(raw) == 0 || raw[0] != '{' {
		return nil, badRequest("document: want a JSON object")
	}
	if err := checkJSONShape("document", raw); err != nil {
		return nil, err
	}
	if err := decodeNumbers(raw, &doc); err != nil {
		return nil, badRequest("document: want a JSON object")
	}
	k, err := s.loadKey(rq, name)
	if err != nil {
		return nil, err
	}
	rq.details["key"] = name
	rq.details["fields"] = strings.Join(fields, ",")
	e := fieldcrypt.Encrypter{Cipher: keyCipher{k}, Fields: fields, Context: ctxb, Strict: strict}
	if op == "encrypt" {
		err = e.EncryptMap(rq.ctx, doc)
	} else {
		err = e.DecryptMap(rq.ctx, doc)
	}
	if err != nil {
		return nil, badRequest("%s", strings.TrimPrefix(transitErr(err).Error(), "fieldcrypt: "))
	}
	return data(map[string]any{"document": doc}), nil
}
