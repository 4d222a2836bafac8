package secrets

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/secrets/acl"
	"github.com/moatless/moatless/internal/secrets/transit"
	"github.com/moatless/moatless/internal/store"
)

// MaxBatch bounds batch_input.
const MaxBatch = 1000

// transitEntry caches an unsealed key with the sealed blob it came from.
type transitEntry struct {
	sealed []byte
	key    *transit.Key
}

// transitSpec is what the store shows of a key in the clear: enough to
// find stale cache entries and keys due for automatic rotation without
// unsealing them.
type transitSpec struct {
	Generation int64         `json:"generation"`
	Type       string        `json:"type"`
	AutoRotate time.Duration `json:"auto_rotate_period,omitempty"`
	// LatestAt is when the latest version was created.
	LatestAt time.Time `json:"latest_at"`
}

// loadKey returns the key, from the cache when the stored blob is the one
// the cached key was opened from. Every save seals afresh (a random
// nonce), so any change, on this replica or another, shows as another
// blob. The generation is not enough: it starts again at 1 when a key is
// deleted and created anew, and a replica that cached the deleted key at
// generation 1 would go on encrypting and decrypting with it. The cached
// key is shared: callers must not change it (updateKey works on a fresh
// copy).
func (s *Service) loadKey(rq *req, name string) (*transit.Key, error) {
	o, err := s.db.SecretsObject(rq.ctx, s.db.SQL(), kindTransitKey, name, false)
	if errors.Is(err, store.ErrNotFound) {
		return nil, badRequest("encryption key not found")
	}
	if err != nil {
		return nil, err
	}
	if e, ok := s.transit.Load(name); ok && bytes.Equal(e.(*transitEntry).sealed, o.Sealed) {
		return e.(*transitEntry).key, nil
	}
	k, err := s.openKey(name, o.Sealed)
	if err != nil {
		return nil, err
	}
	s.transit.Store(name, &transitEntry{sealed: o.Sealed, key: k})
	return k, nil
}

func (s *Service) openKey(name string, sealed []byte) (*transit.Key, error) {
	plain, err := s.barrier.Open("transit/"+name, sealed)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	var k transit.Key
	if err := json.Unmarshal(plain, &k); err != nil {
		return nil, err
	}
	return &k, nil
}

// updateKey changes a key under its row lock and seals it back with a new
// generation; fn gets a private copy.
func (s *Service) updateKey(rq *req, name string, fn func(k *transit.Key) error) (*transit.Key, error) {
	var out *transit.Key
	err := rq.tx(func(tx *sql.Tx) error {
		o, err := s.db.SecretsObject(rq.ctx, tx, kindTransitKey, name, true)
		if errors.Is(err, store.ErrNotFound) {
			return badRequest("encryption key not found")
		}
		if err != nil {
			return err
		}
		var spec transitSpec
		if err := json.Unmarshal(o.Spec, &spec); err != nil {
			return err
		}
		k, err := s.openKey(name, o.Sealed)
		if err != nil {
			return err
		}
		if err := fn(k); err != nil {
			return err
		}
		out = k
		return s.saveKey(rq, tx, k, spec.Generation+1)
	})
	return out, err
}

func (s *Service) saveKey(rq *req, tx *sql.Tx, k *transit.Key, gen int64) error {
	plain, err := json.Marshal(k)
	if err != nil {
		return err
	}
	sealed, err := s.barrier.Seal("transit/"+k.Name, plain)
	clear(plain)
	if err != nil {
		return err
	}
	spec := transitSpec{Generation: gen, Type: k.Type, AutoRotate: k.AutoRotatePeriod, LatestAt: k.Versions[k.LatestVersion].CreatedAt}
	return s.db.PutSecretsObject(rq.ctx, tx, store.SecretsObject{Kind: kindTransitKey, Name: k.Name, Spec: jsonSpec(spec), Sealed: sealed})
}

// autoRotate rotates the keys whose auto_rotate_period has passed since
// their latest version, each with an audit record.
func (s *Service) autoRotate(ctx context.Context) {
	names, err := s.db.SecretsObjectNames(ctx, kindTransitKey)
	if err != nil {
		s.log.Warn("transit auto-rotation: list keys", "err", err)
		return
	}
	now := s.now()
	for _, name := range names {
		o, err := s.db.SecretsObject(ctx, s.db.SQL(), kindTransitKey, name, false)
		if err != nil {
			continue
		}
		var spec transitSpec
		if json.Unmarshal(o.Spec, &spec) != nil || spec.AutoRotate <= 0 || now.Before(spec.LatestAt.Add(spec.AutoRotate)) {
			continue
		}
		rq := &req{s: s, ctx: ctx, path: "transit/keys/" + name + "/rotate", op: "update", id: newUUID(),
			details: map[string]string{"key": name, "reason": "auto_rotate_period"}, tok: &tokenCtx{subject: "moatless-secrets"}}
		if _, err := s.updateKey(rq, name, func(k *transit.Key) error {
			if k.AutoRotatePeriod <= 0 || now.Before(k.Versions[k.LatestVersion].CreatedAt.Add(k.AutoRotatePeriod)) {
				return errNoRotation // another replica rotated it first
			}
			return k.Rotate(now)
		}); err != nil && !errors.Is(err, errNoRotation) {
			s.log.Warn("transit auto-rotation failed", "key", name, "err", err)
		}
	}
}

var errNoRotation = errors.New("secrets: no rotation due")

func (s *Service) transitAPI(rq *req, rest string) (*envelope, error) {
	op, tail, _ := strings.Cut(rest, "/")
	name, sub, _ := strings.Cut(tail, "/")
	if op == "keys" && name == "" {
		if rq.op != "list" {
			return nil, errf(http.StatusMethodNotAllowed, "transit/keys is LIST")
		}
		if err := rq.need(acl.List); err != nil {
			return nil, err
		}
		names, err := s.db.SecretsObjectNames(rq.ctx, kindTransitKey)
		if err != nil {
			return nil, err
		}
		return listing(names)
	}
	if op == "random" {
		return s.transitRandom(rq, tail)
	}
	if op == "datakey" {
		// datakey/plaintext|wrapped/NAME
		kind := name
		name, sub, _ = strings.Cut(sub, "/")
		if kind != "plaintext" && kind != "wrapped" {
			return nil, rq.noRoute()
		}
		sub = kind
	}
	if !acl.ValidName(name) {
		return nil, rq.noRoute()
	}
	rq.details["key"] = name
	switch op {
	case "keys":
		return s.transitKeys(rq, name, sub)
	case "encrypt", "decrypt", "rewrap", "datakey", "hmac", "sign", "verify":
	default:
		return nil, rq.noRoute()
	}
	if rq.op != "update" {
		return nil, errf(http.StatusMethodNotAllowed, "%s is POST", rq.path)
	}
	if err := rq.need(acl.Update); err != nil {
		return nil, err
	}
	k, err := s.loadKey(rq, name)
	if err != nil {
		return nil, err
	}
	switch op {
	case "encrypt":
		return s.batch(rq, func(it *params) (map[string]any, error) {
			pt := it.b64("plaintext", true)
			ctx := it.b64("context", false)
			it.b64("nonce", false)
			v := it.integer("key_version")
			it.raw("reference")
			if err := it.done(); err != nil {
				return nil, err
			}
			ct, err := k.Encrypt(pt, ctx, int(v))
			if err != nil {
				return nil, transitErr(err)
			}
			ver, _, _ := transit.ParseVersioned(ct)
			return map[string]any{"ciphertext": ct, "key_version": ver}, nil
		}, "type", "convergent_encryption", "associated_data")
	case "decrypt":
		return s.batch(rq, func(it *params) (map[string]any, error) {
			ct := it.str("ciphertext")
			ctx := it.b64("context", false)
			it.b64("nonce", false)
			it.raw("reference")
			if err := it.done(); err != nil {
				return nil, err
			}
			pt, _, err := k.Decrypt(ct, ctx)
			if err != nil {
				return nil, transitErr(err)
			}
			return map[string]any{"plaintext": b64(pt)}, nil
		})
	case "rewrap":
		return s.batch(rq, func(it *params) (map[string]any, error) {
			ct := it.str("ciphertext")
			ctx := it.b64("context", false)
			v := it.integer("key_version")
			it.b64("nonce", false)
			it.raw("reference")
			if err := it.done(); err != nil {
				return nil, err
			}
			pt, _, err := k.Decrypt(ct, ctx)
			if err != nil {
				return nil, transitErr(err)
			}
			out, err := k.Encrypt(pt, ctx, int(v))
			clear(pt)
			if err != nil {
				return nil, transitErr(err)
			}
			ver, _, _ := transit.ParseVersioned(out)
			return map[string]any{"ciphertext": out, "key_version": ver}, nil
		})
	case "datakey":
		p := rq.body
		ctx := p.b64("context", false)
		bits := p.integer("bits")
		p.b64("nonce", false)
		if err := p.done(); err != nil {
			return nil, err
		}
		if bits == 0 {
			bits = 256
		}
		if bits != 128 && bits != 256 && bits != 512 {
			return nil, badRequest("bits: 128, 256 or 512")
		}
		dk := make([]byte, bits/8)
		if _, err := rand.Read(dk); err != nil {
			return nil, err
		}
		ct, err := k.Encrypt(dk, ctx, 0)
		if err != nil {
			return nil, transitErr(err)
		}
		ver, _, _ := transit.ParseVersioned(ct)
		d := map[string]any{"ciphertext": ct, "key_version": ver}
		if sub == "plaintext" {
			d["plaintext"] = b64(dk)
		}
		clear(dk)
		return data(d), nil
	case "hmac":
		alg, err := algParam(rq.body, "algorithm", sub)
		if err != nil {
			return nil, err
		}
		return s.batch(rq, func(it *params) (map[string]any, error) {
			in := it.b64("input", true)
			v := it.integer("key_version")
			it.raw("reference")
			if err := it.done(); err != nil {
				return nil, err
			}
			h, err := k.HMAC(in, int(v), alg)
			if err != nil {
				return nil, transitErr(err)
			}
			return map[string]any{"hmac": h}, nil
		})
	case "sign", "verify":
		alg, err := algParam(rq.body, "hash_algorithm", sub)
		if err != nil {
			return nil, err
		}
		pre := rq.body.boolean("prehashed")
		marsh := rq.body.str("marshaling_algorithm")
		rq.body.raw("signature_algorithm")
		return s.batch(rq, func(it *params) (map[string]any, error) {
			in := it.b64("input", true)
			ctx := it.b64("context", false)
			o := transit.SignOptions{HashAlgorithm: alg, Prehashed: pre, Marshaling: marsh, Context: ctx}
			it.raw("reference")
			if op == "sign" {
				v := it.integer("key_version")
				if err := it.done(); err != nil {
					return nil, err
				}
				sig, err := k.Sign(in, int(v), o)
				if err != nil {
					return nil, transitErr(err)
				}
				ver, _, _ := transit.ParseVersioned(sig)
				return map[string]any{"signature": sig, "key_version": ver}, nil
			}
			sig := it.str("signature")
			tag := it.str("hmac")
			if err := it.done(); err != nil {
				return nil, err
			}
			var ok bool
			switch {
			case sig != "" && tag != "":
				return nil, badRequest("give signature or hmac, not both")
			case tag != "":
				ok, err = k.VerifyHMAC(in, tag, alg)
			case sig != "":
				ok, err = k.Verify(in, sig, o)
			default:
				return nil, badRequest("signature or hmac: required")
			}
			if err != nil {
				return nil, transitErr(err)
			}
			return map[string]any{"valid": ok}, nil
		})
	}
	return nil, rq.noRoute()
}

func algParam(p *params, field, fromPath string) (string, error) {
	alg := p.str(field)
	if fromPath != "" {
		if alg != "" && alg != fromPath {
			return "", badRequest("%s %q disagrees with the path's %q", field, alg, fromPath)
		}
		alg = fromPath
	}
	return alg, nil
}

func transitErr(err error) error {
	switch {
	case errors.Is(err, transit.ErrBadCiphertext), errors.Is(err, transit.ErrDecrypt), errors.Is(err, transit.ErrVersion),
		errors.Is(err, transit.ErrUnsupported), strings.HasPrefix(err.Error(), "transit: "):
		return badRequest("%s", strings.TrimPrefix(err.Error(), "transit: "))
	}
	return err
}

// batch runs one, or each item of batch_input, through fn. As in Vault,
// any failing item makes the status 400 unless partial_failure_response_code
// says otherwise for partial failures; every item reports its own error.
func (s *Service) batch(rq *req, fn func(it *params) (map[string]any, error), ignore ...string) (*envelope, error) {
	for _, k := range ignore {
		if k == "type" || k == "convergent_encryption" {
			rq.body.raw(k) // upsert parameters: keys are created explicitly here
		} else if rq.body.has(k) {
			return nil, badRequest("%s is not supported", k)
		}
	}
	partial := rq.body.integer("partial_failure_response_code")
	raw := rq.body.raw("batch_input")
	if raw == nil {
		out, err := fn(rq.body)
		if err != nil {
			return nil, err
		}
		return data(out), nil
	}
	if rq.body.err != nil { // a malformed top-level field
		return nil, rq.body.err
	}
	items, err := batchItems(raw)
	if err != nil {
		return nil, err
	}
	// Top-level fields other than the batch knobs become defaults of each
	// item (Vault lets context etc. be given once).
	var shared map[string]json.RawMessage
	for k, v := range rq.body.m {
		if !rq.body.used[k] {
			if shared == nil {
				shared = map[string]json.RawMessage{}
			}
			shared[k] = v
			rq.body.used[k] = true
		}
	}
	results := make([]map[string]any, len(items))
	failed := 0
	for i, it := range items {
		p := &params{m: map[string]json.RawMessage{}, used: map[string]bool{}}
		for k, v := range shared {
			p.m[k] = v
		}
		for k, v := range it {
			p.m[k] = v
		}
		out, err := fn(p)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) {
				return nil, err
			}
			failed++
			out = map[string]any{"error": ae.msg}
		}
		if ref, ok := it["reference"]; ok {
			out["reference"] = json.RawMessage(ref)
		}
		results[i] = out
	}
	rq.details["batch_items"] = strconv.Itoa(len(items))
	env := data(map[string]any{"batch_results": results})
	if failed > 0 {
		status := http.StatusBadRequest
		if failed < len(items) && partial >= 200 && partial < 600 {
			status = int(partial)
		}
		rq.details["batch_failures"] = strconv.Itoa(failed)
		if status != http.StatusOK {
			return env, &apiError{status: status, msg: "batch had failures", body: env}
		}
	}
	return env, nil
}

// batchItems reads batch_input item by item: at most MaxBatch objects
// (counted as they are read, not after 2 MiB of empty objects were
// decoded), each read like a body (parseParams: members bounded, each
// name once).
func batchItems(raw json.RawMessage) ([]map[string]json.RawMessage, error) {
	bad := badRequest("batch_input: want a non-empty list of objects")
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('[') {
		return nil, bad
	}
	var items []map[string]json.RawMessage
	for dec.More() {
		if len(items) == MaxBatch {
			return nil, badRequest("batch_input: at most %d items", MaxBatch)
		}
		var it json.RawMessage
		if err := dec.Decode(&it); err != nil {
			return nil, bad
		}
		if t := bytes.TrimSpace(it); len(t) == 0 || t[0] != '{' {
			return nil, bad
		}
		p, err := parseParams(it)
		if err != nil {
			return nil, badRequest("batch_input[%d]: %s", len(items), err.Error())
		}
		items = append(items, p.m)
	}
	if len(items) == 0 {
		return nil, bad
	}
	return items, nil
}

func (s *Service) transitKeys(rq *req, name, sub string) (*envelope, error) {
	switch sub {
	case "":
	case "rotate":
		if err := rq.need(acl.Update); err != nil {
			return nil, err
		}
		if err := rq.body.done(); err != nil {
			return nil, err
		}
		k, err := s.updateKey(rq, name, func(k *transit.Key) error { return k.Rotate(s.now()) })
		if err != nil {
			return nil, transitErr(err)
		}
		rq.details["latest_version"] = strconv.Itoa(k.LatestVersion)
		return data(keyInfo(k)), nil
	case "config":
		if err := rq.need(acl.Update); err != nil {
			return nil, err
		}
		return s.transitConfig(rq, name)
	case "trim":
		if err := rq.need(acl.Update); err != nil {
			return nil, err
		}
		v := rq.body.integer("min_available_version")
		if err := rq.body.done(); err != nil {
			return nil, err
		}
		k, err := s.updateKey(rq, name, func(k *transit.Key) error { return k.Trim(int(v)) })
		if err != nil {
			return nil, transitErr(err)
		}
		return data(keyInfo(k)), nil
	default:
		return nil, rq.noRoute()
	}
	switch rq.op {
	case "read":
		if err := rq.need(acl.Read); err != nil {
			return nil, err
		}
		k, err := s.loadKey(rq, name)
		if err != nil {
			return nil, store.ErrNotFound
		}
		return data(keyInfo(k)), nil
	case "delete":
		if err := rq.need(acl.Delete); err != nil {
			return nil, err
		}
		k, err := s.loadKey(rq, name)
		if err != nil {
			return nil, err
		}
		if !k.DeletionAllowed {
			return nil, badRequest("deletion is not allowed for this key (set deletion_allowed with keys/%s/config first)", name)
		}
		err = rq.tx(func(tx *sql.Tx) error { return s.db.DeleteSecretsObject(rq.ctx, tx, kindTransitKey, name) })
		s.transit.Delete(name)
		return nil, err
	case "update":
	default:
		return nil, errf(http.StatusMethodNotAllowed, "unsupported operation on %s", rq.path)
	}
	if err := rq.need(acl.Create); err != nil {
		return nil, err
	}
	p := rq.body
	typ := p.str("type")
	derived := p.boolean("derived")
	conv := p.boolean("convergent_encryption")
	exportable := p.boolean("exportable")
	if exportable {
		return nil, badRequest("exportable keys are not supported: keys never leave the server")
	}
	arp := p.duration("auto_rotate_period")
	if arp != 0 && arp < time.Hour {
		return nil, badRequest("auto_rotate_period: at least 1h, or 0")
	}
	p.raw("allow_plaintext_backup")
	if err := p.done(); err != nil {
		return nil, err
	}
	k, err := transit.New(name, typ, derived, conv, s.now())
	if err != nil {
		return nil, transitErr(err)
	}
	k.AutoRotatePeriod = arp
	rq.details["type"] = k.Type
	err = rq.tx(func(tx *sql.Tx) error {
		if _, err := s.db.SecretsObject(rq.ctx, tx, kindTransitKey, name, true); err == nil {
			return errKeyExists
		}
		return s.saveKey(rq, tx, k, 1)
	})
	if errors.Is(err, errKeyExists) {
		// Vault answers an existing key's creation with success and the
		// key as it is (idempotent create).
		rq.audited = false
		k, err := s.loadKey(rq, name)
		if err != nil {
			return nil, err
		}
		return data(keyInfo(k)), nil
	}
	if err != nil {
		return nil, err
	}
	return data(keyInfo(k)), nil
}

var errKeyExists = errors.New("secrets: transit key exists")

func (s *Service) transitConfig(rq *req, name string) (*envelope, error) {
	p := rq.body
	type opt struct {
		set bool
		v   int64
	}
	var minDec, minEnc opt
	var err error
	if minDec.set = p.has("min_decryption_version"); minDec.set {
		minDec.v = p.integer("min_decryption_version")
	}
	if minEnc.set = p.has("min_encryption_version"); minEnc.set {
		minEnc.v = p.integer("min_encryption_version")
	}
	delSet := p.has("deletion_allowed")
	del := p.boolean("deletion_allowed")
	arpSet := p.has("auto_rotate_period")
	arp := p.duration("auto_rotate_period")
	if p.boolean("exportable") {
		return nil, badRequest("exportable keys are not supported: keys never leave the server")
	}
	p.raw("allow_plaintext_backup")
	if err := p.done(); err != nil {
		return nil, err
	}
	k, err := s.updateKey(rq, name, func(k *transit.Key) error {
		if minDec.set {
			if minDec.v < 1 || int(minDec.v) > k.LatestVersion {
				return badRequest("min_decryption_version: 1 to the latest version (%d)", k.LatestVersion)
			}
			if int(minDec.v) < k.MinAvailableVersion {
				return badRequest("min_decryption_version: versions below %d were trimmed", k.MinAvailableVersion)
			}
			k.MinDecryptionVersion = int(minDec.v)
		}
		if minEnc.set {
			if minEnc.v < 0 || int(minEnc.v) > k.LatestVersion {
				return badRequest("min_encryption_version: 0 to the latest version (%d)", k.LatestVersion)
			}
			k.MinEncryptionVersion = int(minEnc.v)
		}
		if k.MinEncryptionVersion > 0 && k.MinEncryptionVersion < k.MinDecryptionVersion {
			return badRequest("min_encryption_version must not be below min_decryption_version")
		}
		if delSet {
			k.DeletionAllowed = del
		}
		if arpSet {
			if arp != 0 && arp < time.Hour {
				return badRequest("auto_rotate_period: at least 1h, or 0")
			}
			k.AutoRotatePeriod = arp
		}
		return nil
	})
	if err != nil {
		return nil, transitErr(err)
	}
	return data(keyInfo(k)), nil
}

// keyInfo is a key as Vault's GET transit/keys/NAME shows it: settings and
// per version the creation time (or public key); never key material.
func keyInfo(k *transit.Key) map[string]any {
	keys := map[string]any{}
	for v, kv := range k.Versions {
		if k.Symmetric() {
			keys[strconv.Itoa(v)] = kv.CreatedAt.Unix()
			continue
		}
		pub, _ := k.PublicKey(v)
		keys[strconv.Itoa(v)] = map[string]any{"public_key": pub, "creation_time": timeStr(kv.CreatedAt), "name": k.Type}
	}
	return map[string]any{"name": k.Name, "type": k.Type, "derived": k.Derived, "convergent_encryption": k.Convergent,
		"exportable": false, "deletion_allowed": k.DeletionAllowed, "latest_version": k.LatestVersion,
		"min_decryption_version": k.MinDecryptionVersion, "min_encryption_version": k.MinEncryptionVersion,
		"min_available_version": k.MinAvailableVersion, "supports_encryption": k.Symmetric(), "supports_decryption": k.Symmetric(),
		"supports_derivation": k.Symmetric() || k.Type == transit.Ed25519, "supports_signing": !k.Symmetric(),
		"auto_rotate_period": int64(k.AutoRotatePeriod / time.Second), "allow_plaintext_backup": false, "keys": keys}
}

func (s *Service) transitRandom(rq *req, tail string) (*envelope, error) {
	if err := rq.need(acl.Update); err != nil {
		return nil, err
	}
	n := int64(32)
	var err error
	format := "base64"
	parts := strings.Split(tail, "/")
	for _, p := range parts {
		switch {
		case p == "":
		case p == "hex" || p == "base64":
			format = p
		default:
			if n, err = strconv.ParseInt(p, 10, 32); err != nil {
				return nil, badRequest("random: %q is neither a byte count nor a format", p)
			}
		}
	}
	if rq.body.has("bytes") {
		n = rq.body.integer("bytes")
	}
	if f := rq.body.str("format"); f != "" {
		format = f
	}
	rq.body.raw("source")
	if err := rq.body.done(); err != nil {
		return nil, err
	}
	if n < 1 || n > 128*1024 {
		return nil, badRequest("bytes: 1 to 131072")
	}
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	out := b64(b)
	if format == "hex" {
		out = hex.EncodeToString(b)
	} else if format != "base64" {
		return nil, badRequest("format: base64 or hex")
	}
	return data(map[string]any{"random_bytes": out}), nil
}
