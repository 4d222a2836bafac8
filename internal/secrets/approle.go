package secrets

import (
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/secrets/acl"
	"github.com/moatless/moatless/internal/store"
)

// Object kinds in the store.
const (
	kindAppRole      = "approle"
	kindJWTRole      = "jwt_role"
	kindTransitKey   = "transit_key"
	kindDBConnection = "db_connection"
	kindDBRole       = "db_role"
	kindKVConfig     = "kv_config"
)

// AppRole is an AppRole role (auth/approle/role/NAME).
type AppRole struct {
	RoleID             string        `json:"role_id"`
	BindSecretID       bool          `json:"bind_secret_id"`
	SecretIDBoundCIDRs []string      `json:"secret_id_bound_cidrs,omitempty"`
	SecretIDNumUses    int64         `json:"secret_id_num_uses"`
	SecretIDTTL        time.Duration `json:"secret_id_ttl"`
	TokenPolicies      []string      `json:"token_policies"`
	TokenTTL           time.Duration `json:"token_ttl"`
	TokenMaxTTL        time.Duration `json:"token_max_ttl"`
	TokenNumUses       int64         `json:"token_num_uses"`
	TokenBoundCIDRs    []string      `json:"token_bound_cidrs,omitempty"`
}

// secretIDSpec is what a secret ID carries besides its hash.
type secretIDSpec struct {
	Metadata        map[string]string `json:"metadata,omitempty"`
	CIDRs           []string          `json:"cidr_list,omitempty"`
	TokenBoundCIDRs []string          `json:"token_bound_cidrs,omitempty"`
	NumUses         int64             `json:"num_uses"`
	TTL             time.Duration     `json:"ttl"`
}

func (s *Service) getObject(rq *req, kind, name string, v any) error {
	o, err := s.db.SecretsObject(rq.ctx, s.db.SQL(), kind, name, false)
	if err != nil {
		return err
	}
	return json.Unmarshal(o.Spec, v)
}

func newSecret() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("secrets: crypto/rand failed: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// approleAPI serves auth/approle/role[/NAME[/...]].
func (s *Service) approleAPI(rq *req, rest string) (*envelope, error) {
	if rest == "role" {
		if rq.op != "list" {
			return nil, errf(http.StatusMethodNotAllowed, "auth/approle/role is LIST")
		}
		if err := rq.need(acl.List); err != nil {
			return nil, err
		}
		names, err := s.db.SecretsObjectNames(rq.ctx, kindAppRole)
		if err != nil {
			return nil, err
		}
		return listing(names)
	}
	name, sub, _ := strings.Cut(strings.TrimPrefix(rest, "role/"), "/")
	if !strings.HasPrefix(rest, "role/") || !acl.ValidName(name) {
		return nil, rq.noRoute()
	}
	rq.details["role"] = name
	switch sub {
	case "":
		return s.approleRole(rq, name)
	case "role-id":
		// The capability first: a caller without it must not learn
		// whether the role exists.
		c := acl.Update
		if rq.op == "read" {
			c = acl.Read
		}
		if err := rq.need(c); err != nil {
			return nil, err
		}
		var role AppRole
		if err := s.getObject(rq, kindAppRole, name, &role); err != nil {
			return nil, err
		}
		if rq.op == "read" {
			return data(map[string]any{"role_id": role.RoleID}), nil
		}
		id := rq.body.str("role_id")
		if err := rq.body.done(); err != nil {
			return nil, err
		}
		if len(id) < 8 || len(id) > 256 {
			return nil, badRequest("role_id: 8 to 256 characters")
		}
		role.RoleID = id
		return nil, rq.tx(func(tx *sql.Tx) error {
			return s.db.PutSecretsObject(rq.ctx, tx, store.SecretsObject{Kind: kindAppRole, Name: name, Lookup: id, Spec: jsonSpec(role)})
		})
	case "secret-id":
		if rq.op == "list" {
			if err := rq.need(acl.List); err != nil {
				return nil, err
			}
			accs, err := s.db.SecretIDAccessors(rq.ctx, name)
			if err != nil {
				return nil, err
			}
			return listing(accs)
		}
		if err := rq.need(acl.Update); err != nil {
			return nil, err
		}
		return s.newSecretID(rq, name)
	case "secret-id-accessor/lookup", "secret-id-accessor/destroy":
		if err := rq.need(acl.Update); err != nil {
			return nil, err
		}
		acc := rq.body.str("secret_id_accessor")
		if err := rq.body.done(); err != nil {
			return nil, err
		}
		if strings.HasSuffix(sub, "destroy") {
			rq.details["secret_id_accessor"] = acc
			return nil, rq.tx(func(tx *sql.Tx) error { return s.db.DeleteSecretIDs(rq.ctx, tx, name, acc) })
		}
		x, err := s.db.SecretIDByAccessor(rq.ctx, name, acc)
		if err != nil {
			return nil, err
		}
		var spec secretIDSpec
		json.Unmarshal(x.Spec, &spec)
		exp := ""
		if !x.ExpiresAt.IsZero() {
			exp = x.ExpiresAt.UTC().Format(time.RFC3339Nano)
		}
		return data(map[string]any{"secret_id_accessor": x.Accessor, "creation_time": x.CreatedAt.UTC().Format(time.RFC3339Nano),
			"expiration_time": exp, "secret_id_num_uses": spec.NumUses, "secret_id_ttl": int64(spec.TTL / time.Second),
			"cidr_list": spec.CIDRs, "metadata": spec.Metadata, "uses_left": x.UsesLeft}), nil
	}
	return nil, rq.noRoute()
}

func listing(keys []string) (*envelope, error) {
	if len(keys) == 0 {
		// 404 with no error message, as Vault answers: {"errors":[]}.
		return nil, fmt.Errorf("%w: nothing to list", store.ErrNotFound)
	}
	return data(map[string]any{"keys": keys}), nil
}

func (s *Service) approleRole(rq *req, name string) (*envelope, error) {
	var role AppRole
	err := s.getObject(rq, kindAppRole, name, &role)
	exists := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	switch rq.op {
	case "read":
		if err := rq.need(acl.Read); err != nil {
			return nil, err
		}
		if !exists {
			return nil, store.ErrNotFound
		}
		return data(map[string]any{"bind_secret_id": role.BindSecretID, "secret_id_bound_cidrs": role.SecretIDBoundCIDRs,
			"secret_id_num_uses": role.SecretIDNumUses, "secret_id_ttl": int64(role.SecretIDTTL / time.Second),
			"token_policies": role.TokenPolicies, "policies": role.TokenPolicies, "token_ttl": int64(role.TokenTTL / time.Second),
			"token_max_ttl": int64(role.TokenMaxTTL / time.Second), "token_num_uses": role.TokenNumUses,
			"token_bound_cidrs": role.TokenBoundCIDRs, "token_type": "service"}), nil
	case "delete":
		if err := rq.need(acl.Delete); err != nil {
			return nil, err
		}
		return nil, rq.tx(func(tx *sql.Tx) error {
			if err := s.db.DeleteSecretIDs(rq.ctx, tx, name, ""); err != nil {
				return err
			}
			return s.db.DeleteSecretsObject(rq.ctx, tx, kindAppRole, name)
		})
	}
	c := acl.Update
	if !exists {
		c = acl.Create
		role = AppRole{RoleID: newUUID(), BindSecretID: true}
	}
	if err := rq.need(c); err != nil {
		return nil, err
	}
	p := rq.body
	p.optBool(&role.BindSecretID, "bind_secret_id")
	p.optList(&role.SecretIDBoundCIDRs, "secret_id_bound_cidrs")
	p.optInt(&role.SecretIDNumUses, "secret_id_num_uses")
	p.optDuration(&role.SecretIDTTL, "secret_id_ttl")
	p.optList(&role.TokenPolicies, "token_policies")
	p.optList(&role.TokenPolicies, "policies") // Vault's older name
	p.optDuration(&role.TokenTTL, "token_ttl")
	p.optDuration(&role.TokenMaxTTL, "token_max_ttl")
	p.optInt(&role.TokenNumUses, "token_num_uses")
	p.optList(&role.TokenBoundCIDRs, "token_bound_cidrs")
	if t := p.str("token_type"); t != "" && t != "service" && t != "default" {
		return nil, badRequest("token_type: only service tokens are issued")
	}
	if err := p.done(); err != nil {
		return nil, err
	}
	if err := validPolicyNames("token_policies", role.TokenPolicies); err != nil {
		return nil, err
	}
	if err := validCIDRs("secret_id_bound_cidrs", role.SecretIDBoundCIDRs); err != nil {
		return nil, err
	}
	if err := validCIDRs("token_bound_cidrs", role.TokenBoundCIDRs); err != nil {
		return nil, err
	}
	if role.SecretIDNumUses < 0 || role.TokenNumUses < 0 {
		return nil, badRequest("num_uses must not be negative")
	}
	if !role.BindSecretID && len(role.SecretIDBoundCIDRs) == 0 && len(role.TokenBoundCIDRs) == 0 {
		return nil, badRequest("bind_secret_id=false needs secret_id_bound_cidrs or token_bound_cidrs: a role_id alone is not a credential")
	}
	writeChecked()
	return nil, rq.tx(func(tx *sql.Tx) error {
		// Existence decided create or update outside this transaction;
		// decide again under the row lock (recheckCreate).
		_, err := s.db.SecretsObject(rq.ctx, tx, kindAppRole, name, true)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if now := err == nil; now != exists {
			if err := rq.recheckCreate(now); err != nil {
				return err
			}
		}
		return s.db.PutSecretsObject(rq.ctx, tx, store.SecretsObject{Kind: kindAppRole, Name: name, Lookup: role.RoleID, Spec: jsonSpec(role)})
	})
}

// newSecretID: POST auth/approle/role/NAME/secret-id. The secret ID is
// returned once; the store keeps its SHA-256.
func (s *Service) newSecretID(rq *req, name string) (*envelope, error) {
	var role AppRole
	if err := s.getObject(rq, kindAppRole, name, &role); err != nil {
		return nil, err
	}
	p := rq.body
	meta := p.strMap("metadata")
	cidrs := p.strList("cidr_list")
	tcidrs := p.strList("token_bound_cidrs")
	spec := secretIDSpec{Metadata: meta, CIDRs: cidrs, TokenBoundCIDRs: tcidrs, NumUses: role.SecretIDNumUses, TTL: role.SecretIDTTL}
	if p.has("num_uses") {
		spec.NumUses = p.integer("num_uses")
	}
	if p.has("ttl") {
		spec.TTL = p.duration("ttl")
	}
	if err := p.done(); err != nil {
		return nil, err
	}
	if err := validCIDRs("cidr_list", cidrs); err != nil {
		return nil, err
	}
	if err := validCIDRs("token_bound_cidrs", tcidrs); err != nil {
		return nil, err
	}
	// As in Vault: a secret ID may narrow its role's address bindings,
	// not widen them (its token_bound_cidrs replace the role's).
	if len(cidrs) > 0 && !cidrsWithin(cidrs, role.SecretIDBoundCIDRs) {
		return nil, badRequest("cidr_list: must be within the role's secret_id_bound_cidrs %v", role.SecretIDBoundCIDRs)
	}
	if len(tcidrs) > 0 && !cidrsWithin(tcidrs, role.TokenBoundCIDRs) {
		return nil, badRequest("token_bound_cidrs: must be within the role's token_bound_cidrs %v", role.TokenBoundCIDRs)
	}
	if spec.NumUses < 0 {
		return nil, badRequest("num_uses must not be negative")
	}
	if role.SecretIDNumUses > 0 && (spec.NumUses == 0 || spec.NumUses > role.SecretIDNumUses) {
		spec.NumUses = role.SecretIDNumUses // a secret ID may not be looser than its role
	}
	if role.SecretIDTTL > 0 && (spec.TTL == 0 || spec.TTL > role.SecretIDTTL) {
		spec.TTL = role.SecretIDTTL
	}
	if len(meta) > 64 {
		return nil, badRequest("metadata: at most 64 keys")
	}
	id := newSecret()
	now := s.now()
	x := store.SecretID{Hash: hashToken(id), Accessor: newUUID(), Role: name, Spec: jsonSpec(spec), UsesLeft: spec.NumUses, CreatedAt: now}
	if spec.TTL > 0 {
		x.ExpiresAt = now.Add(spec.TTL)
	}
	rq.details["secret_id_accessor"] = x.Accessor
	if err := rq.tx(func(tx *sql.Tx) error { return s.db.CreateSecretID(rq.ctx, tx, x) }); err != nil {
		return nil, err
	}
	return data(map[string]any{"secret_id": id, "secret_id_accessor": x.Accessor, "secret_id_ttl": int64(spec.TTL / time.Second),
		"secret_id_num_uses": spec.NumUses}), nil
}

// approleLogin: POST auth/approle/login {role_id, secret_id}. The secret
// ID is spent under the row lock in the same transaction that issues the
// token, so a use-limited ID is never used once too often; every failure
// gets one message.
func (s *Service) approleLogin(rq *req) (*envelope, error) {
	rq.op = "update"
	roleID := rq.body.str("role_id")
	secretID := rq.body.str("secret_id")
	if err := rq.body.done(); err != nil {
		return nil, err
	}
	const msg = "invalid role ID or secret ID"
	if roleID == "" || len(roleID) > 256 || len(secretID) > 256 {
		return nil, s.loginFailed(rq, msg, "malformed")
	}
	o, err := s.db.SecretsObjectByLookup(rq.ctx, kindAppRole, roleID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, s.loginFailed(rq, msg, "unknown role id")
	}
	if err != nil {
		return nil, err
	}
	var role AppRole
	if err := json.Unmarshal(o.Spec, &role); err != nil {
		return nil, err
	}
	rq.details["role"] = o.Name
	rq.details["method"] = "approle"
	if err := checkCIDRs(role.SecretIDBoundCIDRs, rq.r); err != nil {
		return nil, s.loginFailed(rq, msg, "source address outside secret_id_bound_cidrs")
	}
	tokenCIDRs := role.TokenBoundCIDRs
	var ai *authInfo
	err = rq.s.db.Tx(rq.ctx, func(tx *sql.Tx) error {
		if role.BindSecretID {
			if secretID == "" {
				// Not "secret_id: required": that told a valid role ID
				// from an unknown one, unthrottled.
				return errSecretID
			}
			x, err := s.db.ConsumeSecretID(rq.ctx, tx, hashToken(secretID), s.now())
			if errors.Is(err, store.ErrNotFound) {
				return errSecretID
			}
			if err != nil {
				return err
			}
			// The hash identifies the ID; the role must match too (an ID
			// of another role is not a credential for this one).
			if x.Role != o.Name {
				return errSecretID
			}
			var spec secretIDSpec
			json.Unmarshal(x.Spec, &spec)
			if err := checkCIDRs(spec.CIDRs, rq.r); err != nil {
				return errSecretID
			}
			if len(spec.TokenBoundCIDRs) > 0 {
				// A secret ID made before its role's bindings were
				// narrowed is checked against both.
				if err := checkCIDRs(role.TokenBoundCIDRs, rq.r); err != nil {
					return errSecretID
				}
				if cidrsWithin(spec.TokenBoundCIDRs, role.TokenBoundCIDRs) {
					tokenCIDRs = spec.TokenBoundCIDRs
				}
			}
			rq.details["secret_id_accessor"] = x.Accessor
		}
		if err := checkCIDRs(tokenCIDRs, rq.r); err != nil {
			return errSecretID
		}
		var err error
		ai, err = s.issueToken(rq, tx, issued{subject: "approle:" + o.Name, display: "approle-" + o.Name, policies: role.TokenPolicies,
			meta: map[string]string{"role_name": o.Name}, ttl: role.TokenTTL, maxTTL: role.TokenMaxTTL, numUses: role.TokenNumUses, renewable: true,
			boundCIDRs: tokenCIDRs})
		if err != nil {
			return err
		}
		return s.cfg.Audit.AppendTx(rq.ctx, tx, rq.event("success"))
	})
	if errors.Is(err, errSecretID) {
		return nil, s.loginFailed(rq, msg, "secret id unknown, expired, used up or from another role or address")
	}
	if err != nil {
		return nil, err
	}
	rq.audited = true
	return s.withPolicies(rq, ai), nil
}

var errSecretID = errors.New("secrets: invalid secret id")

// jwtRoleAPI serves auth/jwt/role[/NAME].
func (s *Service) jwtRoleAPI(rq *req, rest string) (*envelope, error) {
	if rest == "role" {
		if err := rq.need(acl.List); err != nil {
			return nil, err
		}
		names, err := s.db.SecretsObjectNames(rq.ctx, kindJWTRole)
		if err != nil {
			return nil, err
		}
		return listing(names)
	}
	name := strings.TrimPrefix(rest, "role/")
	if !strings.HasPrefix(rest, "role/") || !acl.ValidName(name) {
		return nil, rq.noRoute()
	}
	switch rq.op {
	case "read":
		if err := rq.need(acl.Read); err != nil {
			return nil, err
		}
		var jr JWTRole
		if err := s.getObject(rq, kindJWTRole, name, &jr); err != nil {
			return nil, err
		}
		return data(map[string]any{"role_type": "jwt", "bound_audiences": jr.BoundAudiences, "bound_subjects": jr.BoundSubjects,
			"bound_subject_patterns": jr.BoundSubjectPatterns, "token_policies": jr.TokenPolicies, "token_ttl": int64(jr.TokenTTL / time.Second),
			"token_max_ttl": int64(jr.TokenMaxTTL / time.Second), "token_num_uses": jr.TokenNumUses, "token_bound_cidrs": jr.TokenBoundCIDRs}), nil
	case "delete":
		if err := rq.need(acl.Delete); err != nil {
			return nil, err
		}
		return nil, rq.tx(func(tx *sql.Tx) error { return s.db.DeleteSecretsObject(rq.ctx, tx, kindJWTRole, name) })
	}
	if err := rq.need(acl.Update); err != nil {
		return nil, err
	}
	p := rq.body
	var jr JWTRole
	if rt := p.str("role_type"); rt != "" && rt != "jwt" {
		return nil, badRequest("role_type: only jwt")
	}
	p.used["user_claim"] = true
	jr.BoundAudiences = p.strList("bound_audiences")
	jr.BoundSubjects = p.strList("bound_subjects")
	if p.has("bound_subject") {
		sub := p.str("bound_subject")
		jr.BoundSubjects = append(jr.BoundSubjects, sub)
	}
	jr.BoundSubjectPatterns = p.strList("bound_subject_patterns")
	jr.TokenPolicies = p.strList("token_policies")
	jr.TokenTTL = p.duration("token_ttl")
	jr.TokenMaxTTL = p.duration("token_max_ttl")
	jr.TokenNumUses = p.integer("token_num_uses")
	jr.TokenBoundCIDRs = p.strList("token_bound_cidrs")
	if err := p.done(); err != nil {
		return nil, err
	}
	if len(jr.BoundAudiences) == 0 {
		return nil, badRequest("bound_audiences: at least one audience is required (a JWT-SVID for any audience would do otherwise)")
	}
	if err := validPolicyNames("token_policies", jr.TokenPolicies); err != nil {
		return nil, err
	}
	if err := validCIDRs("token_bound_cidrs", jr.TokenBoundCIDRs); err != nil {
		return nil, err
	}
	check := acl.Policy{Name: "x", Paths: []acl.Rule{{Path: "x", Capabilities: []string{"read"}}},
		Subjects: acl.Subjects{SPIFFEIDs: jr.BoundSubjects, SPIFFEIDPatterns: jr.BoundSubjectPatterns}}
	if err := check.Validate(); err != nil {
		return nil, badRequest("%s", strings.ReplaceAll(err.Error(), "subjects.spiffe_ids", "bound_subjects"))
	}
	return nil, rq.tx(func(tx *sql.Tx) error {
		return s.db.PutSecretsObject(rq.ctx, tx, store.SecretsObject{Kind: kindJWTRole, Name: name, Spec: jsonSpec(jr)})
	})
}
