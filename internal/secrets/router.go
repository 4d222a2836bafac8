package secrets

import (
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/moatless/moatless/internal/secrets/acl"
	"github.com/moatless/moatless/internal/secrets/barrier"
	"github.com/moatless/moatless/internal/store"
)

// DefaultKVMount is the KV version 2 mount every server has.
const DefaultKVMount = "secret"

func (s *Service) route(rq *req) (*envelope, error) {
	first, rest, _ := strings.Cut(rq.path, "/")
	switch first {
	case "sys":
		return s.sysAPI(rq, rest)
	case "auth":
		method, r2, _ := strings.Cut(rest, "/")
		switch method {
		case "token":
			return s.tokenAPI(rq, r2)
		case "approle":
			return s.approleAPI(rq, r2)
		case "jwt":
			return s.jwtRoleAPI(rq, r2)
		}
	case "transit":
		return s.transitAPI(rq, rest)
	case "database":
		return s.databaseAPI(rq, rest)
	case "fieldcrypt":
		return s.fieldAPI(rq, rest)
	default:
		if ok, err := s.isKVMount(rq, first); err != nil {
			return nil, err
		} else if ok {
			return s.kvAPI(rq, first, rest)
		}
	}
	return nil, rq.noRoute()
}

func (s *Service) isKVMount(rq *req, name string) (bool, error) {
	if name == DefaultKVMount {
		return true, nil
	}
	_, err := s.db.SecretsObject(rq.ctx, s.db.SQL(), kindKVConfig, name, false)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// reservedMounts are names a KV mount may not take: the secrets service's
// own engines and the server's other /v1/ APIs (admin, agent, and OPA's
// /v1/data/ and /v1/policies/, which the server routes first).
var reservedMounts = map[string]bool{"data": true, "policies": true, "sys": true, "auth": true, "transit": true, "database": true, "fieldcrypt": true, "identity": true, "cubbyhole": true, "admin": true, "agent": true}

func (s *Service) sysAPI(rq *req, rest string) (*envelope, error) {
	switch {
	case rest == "policies/acl" || strings.HasPrefix(rest, "policies/"):
		return s.policiesAPI(rq, strings.TrimPrefix(rest, "policies/"))
	case strings.HasPrefix(rest, "policy"):
		// Vault's older sys/policy/NAME endpoints.
		return s.policiesAPI(rq, "acl"+strings.TrimPrefix(rest, "policy"))
	case strings.HasPrefix(rest, "leases/"):
		return s.leasesAPI(rq, strings.TrimPrefix(rest, "leases/"))
	case rest == "renew" || rest == "revoke" || strings.HasPrefix(rest, "revoke-prefix/"):
		return s.leasesAPI(rq, rest)
	case strings.HasPrefix(rest, "audit-hash/"):
		if err := rq.need(acl.Update); err != nil {
			return nil, err
		}
		in := rq.body.str("input")
		if err := rq.body.done(); err != nil {
			return nil, err
		}
		return data(map[string]any{"hash": s.hmacValue([]byte(in))}), nil
	case strings.HasPrefix(rest, "internal/ui/mounts/"):
		m, _, _ := strings.Cut(strings.TrimPrefix(rest, "internal/ui/mounts/"), "/")
		return s.mountInfo(rq, m)
	case rest == "mounts":
		if err := rq.need(acl.Read); err != nil {
			return nil, err
		}
		out := map[string]any{
			"transit/":    map[string]any{"type": "transit", "options": map[string]string{}},
			"database/":   map[string]any{"type": "database", "options": map[string]string{}},
			"fieldcrypt/": map[string]any{"type": "fieldcrypt", "options": map[string]string{}},
		}
		names, err := s.db.SecretsObjectNames(rq.ctx, kindKVConfig)
		if err != nil {
			return nil, err
		}
		for _, n := range append(names, DefaultKVMount) {
			out[n+"/"] = map[string]any{"type": "kv", "options": map[string]string{"version": "2"}}
		}
		return data(out), nil
	case strings.HasPrefix(rest, "mounts/"):
		return s.mountCreate(rq, strings.TrimPrefix(rest, "mounts/"))
	case rest == "rotate":
		if err := rq.need(acl.Update | acl.Sudo); err != nil {
			return nil, err
		}
		// The barrier supports terms (older terms keep opening what they
		// sealed), but sealing a new keyring needs the root key, which the
		// server does not keep after unsealing.
		return nil, errf(http.StatusNotImplemented, "rotating the keyring's data key is not supported yet")
	}
	return nil, rq.noRoute()
}

func (s *Service) mountInfo(rq *req, m string) (*envelope, error) {
	// As Vault: only to a caller with some capability under the mount,
	// so it cannot be used to enumerate mounts.
	if !rq.tok.acl.AnyUnder(m) {
		return nil, errPermission
	}
	ok, err := s.isKVMount(rq, m)
	if err != nil {
		return nil, err
	}
	switch {
	case ok:
		return data(map[string]any{"type": "kv", "path": m + "/", "options": map[string]string{"version": "2"}}), nil
	case m == "transit" || m == "database" || m == "fieldcrypt":
		return data(map[string]any{"type": m, "path": m + "/", "options": map[string]string{}}), nil
	}
	return nil, store.ErrNotFound
}

// mountCreate: POST sys/mounts/NAME {"type": "kv", "options": {"version": "2"}}
// adds a KV version 2 mount (the only kind of mount that can be added).
func (s *Service) mountCreate(rq *req, name string) (*envelope, error) {
	if err := rq.need(acl.Update | acl.Sudo); err != nil {
		return nil, err
	}
	if rq.op == "delete" {
		return nil, badRequest("mounts cannot be removed; destroy their secrets instead")
	}
	typ := rq.body.str("type")
	var opts map[string]string
	if raw := rq.body.raw("options"); raw != nil {
		if json.Unmarshal(raw, &opts) != nil {
			return nil, badRequest("options: want an object of strings")
		}
	}
	rq.body.raw("description")
	rq.body.raw("config")
	if err := rq.body.done(); err != nil {
		return nil, err
	}
	if typ != "kv" && typ != "kv-v2" || (typ == "kv" && opts["version"] != "2") {
		return nil, badRequest("only KV version 2 mounts can be added (type kv, options.version 2)")
	}
	if !acl.ValidName(name) || strings.Contains(name, ".") || reservedMounts[name] || name == DefaultKVMount {
		return nil, badRequest("mount name %q is reserved or invalid", name)
	}
	return nil, rq.tx(func(tx *sql.Tx) error {
		if _, err := s.db.SecretsObject(rq.ctx, tx, kindKVConfig, name, true); err == nil {
			return badRequest("path is already in use at %s/", name)
		}
		return s.db.PutSecretsObject(rq.ctx, tx, store.SecretsObject{Kind: kindKVConfig, Name: name, Spec: jsonSpec(kvConfig{})})
	})
}

// sealStatus: GET sys/seal-status (and sys/health), unauthenticated as
// in Vault: it reveals only whether the service is sealed.
func (s *Service) sealStatus(rq *req) (*envelope, error) {
	rq.op = "read"
	sealed := s.Sealed()
	d := map[string]any{"type": "moatless", "initialized": true, "sealed": sealed, "t": 1, "n": 1, "progress": 0,
		"version": "moatless", "storage_type": s.db.Dialect().String(), "standby": false}
	if sealed && rq.path == "sys/health" {
		rq.audited = true // polled by load balancers: not an audited access
		writeJSON(rq.w, http.StatusServiceUnavailable, d)
		return nil, errHandled
	}
	rq.audited = true
	return data(d), nil
}

var errHandled = &apiError{status: 0}

// unsealAPI: PUT sys/unseal {"key": BASE64} or {"passphrase": "..."}.
// Only admins may unseal: the passphrase's argon2id costs 64 MiB per try.
func (s *Service) unsealAPI(rq *req) (*envelope, error) {
	rq.op = "update"
	actor, ok := s.cfg.Admin(rq.r)
	if !ok {
		return nil, errf(http.StatusForbidden, "permission denied: unsealing needs the admin credential")
	}
	rq.tok = &tokenCtx{root: true, adminID: actor}
	key := rq.body.str("key")
	pass := rq.body.str("passphrase")
	rq.body.raw("reset")
	if err := rq.body.done(); err != nil {
		return nil, err
	}
	switch {
	case key != "" && pass != "":
		return nil, badRequest("give key or passphrase, not both")
	case key != "":
		k, err := barrier.ParseKey([]byte(key))
		if err != nil {
			return nil, badRequest("%v", err)
		}
		err = s.UnsealKey(rq.ctx, k)
		if err != nil {
			return nil, unsealError(err)
		}
	case pass != "":
		if err := s.UnsealPassphrase(rq.ctx, []byte(pass)); err != nil {
			return nil, unsealError(err)
		}
	default:
		return nil, badRequest("key or passphrase: required")
	}
	return data(map[string]any{"sealed": false, "t": 1, "n": 1, "progress": 0}), nil
}

func unsealError(err error) error {
	if errors.Is(err, barrier.ErrWrongKey) {
		return badRequest("%v", err)
	}
	if strings.Contains(err.Error(), "passphrase") || strings.Contains(err.Error(), "root key") {
		return badRequest("%v", err)
	}
	return err
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
