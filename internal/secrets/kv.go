package secrets

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/secrets/acl"
	"github.com/moatless/moatless/internal/store"
)

// KV limits and defaults.
const (
	DefaultMaxVersions = 10 // Vault's default when max_versions is 0
	MaxKVVersions      = 1000
	MaxCustomMetadata  = 64
	kvListLimit        = 10000
)

// kvConfig is a KV mount's configuration (<mount>/config).
type kvConfig struct {
	MaxVersions        int64         `json:"max_versions"`
	CASRequired        bool          `json:"cas_required"`
	DeleteVersionAfter time.Duration `json:"delete_version_after"`
}

func (s *Service) kvConfig(rq *req, mount string) (kvConfig, error) {
	var c kvConfig
	o, err := s.db.SecretsObject(rq.ctx, s.db.SQL(), kindKVConfig, mount, false)
	if errors.Is(err, store.ErrNotFound) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	return c, json.Unmarshal(o.Spec, &c)
}

func timeStr(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func place(mount, path string, version int64) string {
	return "kv/" + mount + "/" + path + "/" + strconv.FormatInt(version, 10)
}

// kvAPI serves <mount>/config|data|metadata|delete|undelete|destroy/<path>.
func (s *Service) kvAPI(rq *req, mount, rest string) (*envelope, error) {
	kind, path, _ := strings.Cut(rest, "/")
	rq.engine = mount
	if kind == "config" && path == "" {
		return s.kvConfigAPI(rq, mount)
	}
	if path == "" && !(kind == "metadata" && rq.op == "list") {
		return nil, rq.noRoute("a secret path is required")
	}
	if len(path) > 512 {
		return nil, badRequest("secret path longer than 512 bytes")
	}
	rq.details["mount"] = mount
	switch kind {
	case "data":
		switch rq.op {
		case "read":
			return s.kvRead(rq, mount, path)
		case "update":
			return s.kvWrite(rq, mount, path, false)
		case "patch":
			return s.kvWrite(rq, mount, path, true)
		case "delete":
			return s.kvDelete(rq, mount, path, nil)
		}
	case "metadata":
		switch rq.op {
		case "list":
			return s.kvList(rq, mount, path)
		case "read":
			return s.kvReadMeta(rq, mount, path)
		case "update", "patch":
			return s.kvWriteMeta(rq, mount, path)
		case "delete":
			if err := rq.need(acl.Delete); err != nil {
				return nil, err
			}
			err := rq.tx(func(tx *sql.Tx) error { return s.db.DeleteKVSecret(rq.ctx, tx, mount, path) })
			if err == nil {
				s.db.CompactFreed(rq.ctx)
			}
			return nil, err
		}
	case "delete", "undelete", "destroy":
		if rq.op != "update" {
			break
		}
		if err := rq.need(acl.Update); err != nil {
			return nil, err
		}
		versions, err := kvVersionsParam(rq.body)
		if err != nil {
			return nil, err
		}
		if err := rq.body.done(); err != nil {
			return nil, err
		}
		switch kind {
		case "delete":
			return s.kvDelete(rq, mount, path, versions)
		case "undelete":
			return nil, s.kvChange(rq, mount, path, func(tx *sql.Tx, m *store.KVMeta) error {
				return s.db.SetKVDeletion(rq.ctx, tx, mount, path, versions, time.Time{})
			})
		case "destroy":
			err := s.kvChange(rq, mount, path, func(tx *sql.Tx, m *store.KVMeta) error {
				return s.db.DestroyKVVersions(rq.ctx, tx, mount, path, versions)
			})
			if err == nil {
				// Best effort: make the freed pages leave the files now.
				s.db.CompactFreed(rq.ctx)
			}
			return nil, err
		}
	}
	if rq.tok.acl.Capabilities(rq.aclPath()) == 0 {
		return nil, rq.noRoute() // a 405 would tell that the mount exists
	}
	return nil, errf(http.StatusMethodNotAllowed, "unsupported operation %s on %s", rq.r.Method, rq.path)
}

func kvVersionsParam(p *params) ([]int64, error) {
	raw := p.raw("versions")
	var vs []int64
	if raw == nil || json.Unmarshal(raw, &vs) != nil || len(vs) == 0 || len(vs) > MaxKVVersions {
		return nil, badRequest("versions: want a list of 1 to %d version numbers", MaxKVVersions)
	}
	for _, v := range vs {
		if v < 1 {
			return nil, badRequest("versions: %d is not a version number", v)
		}
	}
	return vs, nil
}

func (s *Service) kvChange(rq *req, mount, path string, fn func(tx *sql.Tx, m *store.KVMeta) error) error {
	return rq.tx(func(tx *sql.Tx) error {
		m, err := s.db.KVMetadata(rq.ctx, tx, mount, path, true)
		if err != nil {
			return err
		}
		if err := fn(tx, &m); err != nil {
			return err
		}
		m.UpdatedAt = s.now()
		return s.db.PutKVMetadata(rq.ctx, tx, m)
	})
}

func versionMeta(v store.KVVersion, custom map[string]string) map[string]any {
	if custom == nil {
		custom = map[string]string{}
	}
	return map[string]any{"created_time": timeStr(v.CreatedAt), "deletion_time": timeStr(v.DeletionTime),
		"destroyed": v.Destroyed, "version": v.Version, "custom_metadata": custom}
}

func (s *Service) kvRead(rq *req, mount, path string) (*envelope, error) {
	if err := rq.need(acl.Read); err != nil {
		return nil, err
	}
	if err := rq.onlyQuery("version"); err != nil {
		return nil, err
	}
	m, err := s.db.KVMetadata(rq.ctx, s.db.SQL(), mount, path, false)
	if err != nil {
		return nil, err
	}
	version := m.CurrentVersion
	if v := rq.q["version"]; v != "" && v != "0" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return nil, badRequest("version %q: want a version number", v)
		}
		version = n
	}
	rq.details["version"] = strconv.FormatInt(version, 10)
	v, err := s.db.KVVersionOf(rq.ctx, s.db.SQL(), mount, path, version)
	if err != nil {
		return nil, err
	}
	meta := versionMeta(v, m.Custom)
	now := s.now()
	if v.Destroyed || (!v.DeletionTime.IsZero() && !now.Before(v.DeletionTime)) {
		// Vault answers 404 with the metadata and null data.
		return &envelope{Data: map[string]any{"data": nil, "metadata": meta}}, errNotFoundWithBody
	}
	plain, err := s.barrier.Open(place(mount, path, version), v.Value)
	if err != nil {
		return nil, err
	}
	var d map[string]any
	if err := decodeNumbers(plain, &d); err != nil {
		return nil, err
	}
	rq.details["data_hmac"] = s.hmacValue(plain)
	clear(plain)
	return data(map[string]any{"data": d, "metadata": meta}), nil
}

var errNotFoundWithBody = &apiError{status: http.StatusNotFound, msg: ""}

func (s *Service) kvWrite(rq *req, mount, path string, patch bool) (*envelope, error) {
	raw := rq.body.raw("data")
	var opts struct {
		CAS *int64 `json:"cas"`
	}
	if o := rq.body.raw("options"); o != nil {
		if err := strictJSON(o, &opts); err != nil {
			return nil, badRequest("options: %v", err)
		}
	}
	if err := rq.body.done(); err != nil {
		return nil, err
	}
	if raw == nil {
		return nil, badRequest("no data provided")
	}
	if err := checkJSONShape("data", raw); err != nil {
		return nil, err
	}
	var in map[string]any
	if err := decodeNumbers(raw, &in); err != nil {
		return nil, badRequest("data: want a JSON object")
	}
	cfg, err := s.kvConfig(rq, mount)
	if err != nil {
		return nil, err
	}
	// Existence decides between create and update, as in Vault.
	_, merr := s.db.KVMetadata(rq.ctx, s.db.SQL(), mount, path, false)
	exists := merr == nil
	if merr != nil && !errors.Is(merr, store.ErrNotFound) {
		return nil, merr
	}
	want := acl.Update
	switch {
	case patch:
		want = acl.Patch
	case !exists:
		want = acl.Create
		rq.op = "create"
	}
	if err := rq.need(want); err != nil {
		return nil, err
	}
	writeChecked()
	var result store.KVVersion
	var custom map[string]string
	err = rq.tx(func(tx *sql.Tx) error {
		now := s.now()
		m, err := s.db.KVMetadata(rq.ctx, tx, mount, path, true)
		isNew := errors.Is(err, store.ErrNotFound)
		if err != nil && !isNew {
			return err
		}
		if !patch && isNew == exists {
			if err := rq.recheckCreate(!isNew); err != nil {
				return err
			}
			rq.op = "update"
			if isNew {
				rq.op = "create"
			}
		}
		if isNew {
			if patch {
				return store.ErrNotFound
			}
			m = store.KVMeta{Mount: mount, Path: path, CreatedAt: now, OldestVersion: 0}
		}
		if (m.CASRequired || cfg.CASRequired) && opts.CAS == nil {
			return badRequest("check-and-set parameter required for this call")
		}
		if opts.CAS != nil && *opts.CAS != m.CurrentVersion {
			return badRequest("check-and-set parameter did not match the current version")
		}
		if patch {
			cur, err := s.db.KVVersionOf(rq.ctx, tx, mount, path, m.CurrentVersion)
			if err != nil {
				return err
			}
			if cur.Destroyed || (!cur.DeletionTime.IsZero() && !now.Before(cur.DeletionTime)) {
				return store.ErrNotFound
			}
			plain, err := s.barrier.Open(place(mount, path, m.CurrentVersion), cur.Value)
			if err != nil {
				return err
			}
			var old map[string]any
			if err := decodeNumbers(plain, &old); err != nil {
				return err
			}
			in = mergePatch(old, in)
		}
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		if len(b) > MaxBody {
			return errf(http.StatusRequestEntityTooLarge, "secret larger than %d bytes", MaxBody)
		}
		rq.details["data_hmac"] = s.hmacValue(b)
		v := m.CurrentVersion + 1
		sealed, err := s.barrier.Seal(place(mount, path, v), b)
		clear(b)
		if err != nil {
			return err
		}
		result = store.KVVersion{Version: v, Value: sealed, CreatedAt: now}
		dva := m.DeleteVersionAfter
		if dva == 0 {
			dva = cfg.DeleteVersionAfter
		}
		if dva > 0 {
			result.DeletionTime = now.Add(dva)
		}
		if err := s.db.InsertKVVersion(rq.ctx, tx, mount, path, result); err != nil {
			return err
		}
		m.CurrentVersion, m.UpdatedAt = v, now
		if m.OldestVersion == 0 {
			m.OldestVersion = v
		}
		maxV := m.MaxVersions
		if maxV == 0 {
			maxV = cfg.MaxVersions
		}
		if maxV == 0 {
			maxV = DefaultMaxVersions
		}
		if v-m.OldestVersion+1 > maxV {
			m.OldestVersion = v - maxV + 1
			if err := s.db.TrimKVVersions(rq.ctx, tx, mount, path, m.OldestVersion); err != nil {
				return err
			}
		}
		custom = m.Custom
		rq.details["version"] = strconv.FormatInt(v, 10)
		return s.db.PutKVMetadata(rq.ctx, tx, m)
	})
	if err != nil {
		return nil, err
	}
	return data(versionMeta(result, custom)), nil
}

// mergePatch applies an RFC 7396 JSON merge patch.
func mergePatch(dst, patch map[string]any) map[string]any {
	if dst == nil {
		dst = map[string]any{}
	}
	for k, v := range patch {
		if v == nil {
			delete(dst, k)
			continue
		}
		if pm, ok := v.(map[string]any); ok {
			dm, _ := dst[k].(map[string]any)
			dst[k] = mergePatch(dm, pm)
			continue
		}
		dst[k] = v
	}
	return dst
}

// kvDelete soft-deletes the listed versions (nil: the current one).
func (s *Service) kvDelete(rq *req, mount, path string, versions []int64) (*envelope, error) {
	if versions == nil {
		if err := rq.need(acl.Delete); err != nil {
			return nil, err
		}
	}
	return nil, s.kvChange(rq, mount, path, func(tx *sql.Tx, m *store.KVMeta) error {
		if versions == nil {
			versions = []int64{m.CurrentVersion}
		}
		return s.db.SetKVDeletion(rq.ctx, tx, mount, path, versions, s.now())
	})
}

func (s *Service) kvList(rq *req, mount, path string) (*envelope, error) {
	if err := rq.need(acl.List); err != nil {
		return nil, err
	}
	prefix := path
	if prefix != "" {
		prefix += "/"
	}
	keys, err := s.db.KVList(rq.ctx, mount, prefix, kvListLimit)
	if err != nil {
		return nil, err
	}
	return listing(keys)
}

func (s *Service) kvReadMeta(rq *req, mount, path string) (*envelope, error) {
	if err := rq.need(acl.Read); err != nil {
		return nil, err
	}
	m, err := s.db.KVMetadata(rq.ctx, s.db.SQL(), mount, path, false)
	if err != nil {
		return nil, err
	}
	vs, err := s.db.KVVersions(rq.ctx, s.db.SQL(), mount, path, false)
	if err != nil {
		return nil, err
	}
	versions := map[string]any{}
	for _, v := range vs {
		versions[strconv.FormatInt(v.Version, 10)] = map[string]any{"created_time": timeStr(v.CreatedAt),
			"deletion_time": timeStr(v.DeletionTime), "destroyed": v.Destroyed}
	}
	custom := m.Custom
	if custom == nil {
		custom = map[string]string{}
	}
	return data(map[string]any{"cas_required": m.CASRequired, "created_time": timeStr(m.CreatedAt), "current_version": m.CurrentVersion,
		"custom_metadata": custom, "delete_version_after": m.DeleteVersionAfter.String(), "max_versions": m.MaxVersions,
		"oldest_version": m.OldestVersion, "updated_time": timeStr(m.UpdatedAt), "versions": versions}), nil
}

func (s *Service) kvWriteMeta(rq *req, mount, path string) (*envelope, error) {
	p := rq.body
	hasMax, hasCAS, hasDVA := p.has("max_versions"), p.has("cas_required"), p.has("delete_version_after")
	maxV := p.integer("max_versions")
	cas := p.boolean("cas_required")
	dva := p.duration("delete_version_after")
	hasCustom := p.has("custom_metadata")
	custom := p.strMap("custom_metadata")
	if err := p.done(); err != nil {
		return nil, err
	}
	if maxV < 0 || maxV > MaxKVVersions {
		return nil, badRequest("max_versions: 0 to %d", MaxKVVersions)
	}
	if len(custom) > MaxCustomMetadata {
		return nil, badRequest("custom_metadata: at most %d keys", MaxCustomMetadata)
	}
	for k, v := range custom {
		if len(k) > 128 || len(v) > 512 {
			return nil, badRequest("custom_metadata: keys up to 128 and values up to 512 bytes")
		}
	}
	_, merr := s.db.KVMetadata(rq.ctx, s.db.SQL(), mount, path, false)
	want := acl.Update
	if errors.Is(merr, store.ErrNotFound) {
		want = acl.Create
	}
	if rq.op == "patch" {
		want = acl.Patch
	}
	if err := rq.need(want); err != nil {
		return nil, err
	}
	writeChecked()
	return nil, rq.tx(func(tx *sql.Tx) error {
		now := s.now()
		m, err := s.db.KVMetadata(rq.ctx, tx, mount, path, true)
		isNew := errors.Is(err, store.ErrNotFound)
		if rq.op != "patch" && isNew == (merr == nil) {
			if err := rq.recheckCreate(!isNew); err != nil {
				return err
			}
		}
		if isNew {
			if rq.op == "patch" {
				return err
			}
			m, err = store.KVMeta{Mount: mount, Path: path, CreatedAt: now}, nil
		}
		if err != nil {
			return err
		}
		// POST replaces the given fields; PATCH too, merging custom metadata.
		if hasMax {
			m.MaxVersions = maxV
		}
		if hasCAS {
			m.CASRequired = cas
		}
		if hasDVA {
			m.DeleteVersionAfter = dva
		}
		if hasCustom {
			if rq.op == "patch" {
				if m.Custom == nil {
					m.Custom = map[string]string{}
				}
				for k, v := range custom {
					m.Custom[k] = v
				}
			} else {
				m.Custom = custom
			}
		}
		if m.MaxVersions > 0 && m.CurrentVersion-m.OldestVersion+1 > m.MaxVersions && m.CurrentVersion > 0 {
			m.OldestVersion = m.CurrentVersion - m.MaxVersions + 1
			if err := s.db.TrimKVVersions(rq.ctx, tx, mount, path, m.OldestVersion); err != nil {
				return err
			}
		}
		m.UpdatedAt = now
		return s.db.PutKVMetadata(rq.ctx, tx, m)
	})
}

// recheckCreate checks again, inside a write's transaction, the
// capability that existence decides (Vault's create for a new object,
// update for an existing one) when the object's existence changed since
// the first check. That check read outside the transaction: another
// writer may have created or deleted the object in between, and what the
// write does is decided under the row lock. Without it a create-only
// token that raced another writer would overwrite what that one wrote,
// and an update-only token would create what was deleted meanwhile.
func (rq *req) recheckCreate(exists bool) error {
	if exists {
		return rq.need(acl.Update)
	}
	return rq.need(acl.Create)
}

// writeChecked runs between a create-or-update write's capability check
// and its transaction (KV data and metadata, AppRole roles); tests replace
// it to put a concurrent writer there.
var writeChecked = func() {}

func (s *Service) kvConfigAPI(rq *req, mount string) (*envelope, error) {
	if rq.op == "read" {
		if err := rq.need(acl.Read); err != nil {
			return nil, err
		}
		c, err := s.kvConfig(rq, mount)
		if err != nil {
			return nil, err
		}
		return data(map[string]any{"max_versions": c.MaxVersions, "cas_required": c.CASRequired, "delete_version_after": c.DeleteVersionAfter.String()}), nil
	}
	if err := rq.need(acl.Update); err != nil {
		return nil, err
	}
	c, err := s.kvConfig(rq, mount)
	if err != nil {
		return nil, err
	}
	p := rq.body
	p.optInt(&c.MaxVersions, "max_versions")
	p.optBool(&c.CASRequired, "cas_required")
	p.optDuration(&c.DeleteVersionAfter, "delete_version_after")
	if err := p.done(); err != nil {
		return nil, err
	}
	if c.MaxVersions < 0 || c.MaxVersions > MaxKVVersions {
		return nil, badRequest("max_versions: 0 to %d", MaxKVVersions)
	}
	return nil, rq.tx(func(tx *sql.Tx) error {
		return s.db.PutSecretsObject(rq.ctx, tx, store.SecretsObject{Kind: kindKVConfig, Name: mount, Spec: jsonSpec(c)})
	})
}

// decodeNumbers decodes a KV version's data with its numbers as
// json.Number, as Vault's decoder does: into float64 a 20-digit number
// was rounded and 1e400 refused, and re-encoded, stored as changed.
// Data without a number is decoded by json.Unmarshal, to the same values:
// a json.Decoder copies b into a buffer it grows by doubling, 6.7 MB of
// the 23 MB a write of one 2 MiB string cost.
func decodeNumbers(b []byte, v any) error {
	if !hasJSONNumber(b) {
		return json.Unmarshal(b, v)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the JSON value")
	}
	return nil
}

// hasJSONNumber reports whether the JSON text b holds a number: outside
// its strings, a digit or '-' is part of one (true, false and null have
// neither). On text that is not JSON the answer does not matter: both of
// decodeNumbers' ways refuse it.
func hasJSONNumber(b []byte) bool {
	inStr, esc := false, false
	for _, c := range b {
		switch {
		case inStr:
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
		case c == '"':
			inStr = true
		case c == '-' || '0' <= c && c <= '9':
			return true
		}
	}
	return false
}

func strictJSON(raw json.RawMessage, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
