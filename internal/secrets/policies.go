package secrets

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/moatless/moatless/internal/secrets/acl"
	"github.com/moatless/moatless/internal/store"
)

// PolicyKind is the kind under which access policies are versioned in
// the store (store.SecretsPolicies).
const PolicyKind = "SecretsPolicy"

// policyCache is the policy set at one version.
type policyCache struct {
	version uint64
	byName  map[string]*acl.Policy
	list    []*acl.Policy
}

// currentPolicies returns the policy set, reloading it when the version
// counter moved (a change on this or another replica).
func (s *Service) currentPolicies(ctx context.Context) (*policyCache, error) {
	v, err := s.db.CurrentPolicyVersionIn(ctx, s.db.SQL(), store.SecretsPolicies)
	if err != nil {
		return nil, err
	}
	if c := s.policies.Load(); c != nil && c.version == v {
		return c, nil
	}
	ver, objs, err := s.db.PolicySetIn(ctx, s.db.SQL(), store.SecretsPolicies, v)
	if err != nil {
		return nil, err
	}
	c := &policyCache{version: ver, byName: map[string]*acl.Policy{}}
	for _, o := range objs {
		var p acl.Policy
		if err := json.Unmarshal(o.Raw, &p); err != nil {
			return nil, fmt.Errorf("secrets: stored policy %s is corrupt: %w", o.Name, err)
		}
		c.byName[p.Name] = &p
		c.list = append(c.list, &p)
	}
	s.policies.Store(c)
	return c, nil
}

// tokenPolicies are the policies that apply to a token now: those named
// on it that still exist, and those whose subjects include its identity.
func (s *Service) tokenPolicies(ctx context.Context, t *tokenCtx) []*acl.Policy {
	c, err := s.currentPolicies(ctx)
	if err != nil {
		s.log.Error("secrets: cannot read access policies; denying", "err", err)
		return nil
	}
	var out []*acl.Policy
	seen := map[string]bool{}
	for _, n := range t.policies {
		if p := c.byName[n]; p != nil && !seen[n] {
			seen[n] = true
			out = append(out, p)
		}
	}
	id := t.identity()
	for _, p := range c.list {
		if !seen[p.Name] && p.Applies(id) {
			seen[p.Name] = true
			out = append(out, p)
		}
	}
	return out
}

func (s *Service) aclFor(ctx context.Context, t *tokenCtx) *acl.ACL {
	return acl.New(s.tokenPolicies(ctx, t))
}

func (s *Service) effectivePolicies(ctx context.Context, t *tokenCtx) []string {
	if t.root {
		return []string{"root"}
	}
	out := []string{}
	for _, p := range s.tokenPolicies(ctx, t) {
		out = append(out, p.Name)
	}
	sort.Strings(out)
	return out
}

// PolicyFile is one input document of a policy apply.
type PolicyFile struct {
	// Name names the file in error messages.
	Name string `json:"name,omitempty"`
	// Policy names the policy of HCL or Vault JSON input (which carry no
	// name); documents in this service's YAML/JSON shape name themselves.
	Policy  string `json:"policy,omitempty"`
	Content string `json:"content"`
}

// PolicyChangeResult answers apply, delete and rollback.
type PolicyChangeResult struct {
	Version uint64               `json:"version"`
	Changes []store.PolicyChange `json:"changes"`
	DryRun  bool                 `json:"dry_run,omitempty"`
}

// policiesAPI serves sys/policies/...: Vault's acl endpoints plus apply,
// history and rollback of the versioned set.
func (s *Service) policiesAPI(rq *req, rest string) (*envelope, error) {
	switch {
	case rest == "acl":
		if err := rq.onlyQuery("version"); err != nil {
			return nil, err
		}
		if err := rq.need(acl.List); err != nil {
			return nil, err
		}
		_, objs, err := s.policySetAt(rq)
		if err != nil {
			return nil, err
		}
		names := []string{}
		for _, p := range objs {
			names = append(names, p.Name)
		}
		return data(map[string]any{"keys": names, "policies": names}), nil
	case strings.HasPrefix(rest, "acl/"):
		return s.policyOne(rq, strings.TrimPrefix(rest, "acl/"))
	case rest == "apply":
		if err := rq.need(acl.Update); err != nil {
			return nil, err
		}
		return s.policyApply(rq)
	case rest == "history":
		if err := rq.need(acl.Read); err != nil {
			return nil, err
		}
		if err := rq.onlyQuery("before", "limit"); err != nil {
			return nil, err
		}
		limit, before := 50, uint64(0)
		if v := rq.q["limit"]; v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1000 {
				return nil, badRequest("limit %q: want 1 to 1000", v)
			}
			limit = n
		}
		if v := rq.q["before"]; v != "" {
			n, err := strconv.ParseUint(v, 10, 63)
			if err != nil {
				return nil, badRequest("before %q: want a version number", v)
			}
			before = n
		}
		h, err := s.db.PolicyHistoryIn(rq.ctx, store.SecretsPolicies, before, limit)
		if err != nil {
			return nil, err
		}
		return data(map[string]any{"versions": h}), nil
	case rest == "rollback":
		if err := rq.need(acl.Update | acl.Sudo); err != nil {
			return nil, err
		}
		v := rq.body.integer("version")
		if err := rq.body.done(); err != nil {
			return nil, err
		}
		if v <= 0 {
			return nil, badRequest("version: required (see \"moatless secrets policy history\")")
		}
		_, target, err := s.db.PolicySetIn(rq.ctx, s.db.SQL(), store.SecretsPolicies, uint64(v))
		if err != nil {
			return nil, err
		}
		res, err := s.writePolicies(rq, "rollback", uint64(v), false, func(cur map[string]store.PolicyObject) []store.PolicyWrite {
			var out []store.PolicyWrite
			keep := map[string]bool{}
			for _, o := range target {
				keep[o.Name] = true
				out = append(out, store.PolicyWrite{PolicyRef: o.PolicyRef, Raw: o.Raw})
			}
			for n, o := range cur {
				if !keep[n] {
					out = append(out, store.PolicyWrite{PolicyRef: o.PolicyRef})
				}
			}
			return out
		})
		if err != nil {
			return nil, err
		}
		return data(res), nil
	}
	return nil, rq.noRoute()
}

func (s *Service) policySetAt(rq *req) (uint64, []*acl.Policy, error) {
	var version uint64
	if v := rq.q["version"]; v != "" {
		n, err := strconv.ParseUint(v, 10, 63)
		if err != nil || n == 0 {
			return 0, nil, badRequest("version %q: want a policy version number", v)
		}
		version = n
	}
	ver, objs, err := s.db.PolicySetIn(rq.ctx, s.db.SQL(), store.SecretsPolicies, version)
	if err != nil {
		return 0, nil, err
	}
	out := []*acl.Policy{}
	for _, o := range objs {
		var p acl.Policy
		if err := json.Unmarshal(o.Raw, &p); err != nil {
			return 0, nil, err
		}
		out = append(out, &p)
	}
	return ver, out, nil
}

func refOf(name string) store.PolicyRef { return store.PolicyRef{Kind: PolicyKind, Name: name} }

func (s *Service) policyOne(rq *req, name string) (*envelope, error) {
	if !acl.ValidName(name) {
		return nil, badRequest("policy name %q: want letters, digits, '_', '-' or '.'", name)
	}
	switch rq.op {
	case "read":
		if err := rq.need(acl.Read); err != nil {
			return nil, err
		}
		if err := rq.onlyQuery("version"); err != nil {
			return nil, err
		}
		ver, all, err := s.policySetAt(rq)
		if err != nil {
			return nil, err
		}
		for _, p := range all {
			if p.Name == name {
				return data(map[string]any{"name": p.Name, "policy": acl.HCL(p.Paths), "description": p.Description,
					"subjects": p.Subjects, "paths": p.Paths, "version": ver}), nil
			}
		}
		return nil, store.ErrNotFound
	case "delete":
		if err := rq.need(acl.Delete); err != nil {
			return nil, err
		}
		res, err := s.writePolicies(rq, "delete", 0, false, func(cur map[string]store.PolicyObject) []store.PolicyWrite {
			if _, ok := cur[name]; !ok {
				return nil
			}
			return []store.PolicyWrite{{PolicyRef: refOf(name)}}
		})
		if err != nil {
			return nil, err
		}
		if len(res.Changes) == 0 {
			return nil, store.ErrNotFound
		}
		return nil, nil
	}
	if err := rq.need(acl.Update); err != nil {
		return nil, err
	}
	src := rq.body.str("policy")
	if err := rq.body.done(); err != nil {
		return nil, err
	}
	p, err := acl.ParseDocument(name, []byte(src))
	if err != nil {
		return nil, badRequest("policy: %v", err)
	}
	_, err = s.writePolicies(rq, "apply", 0, false, func(cur map[string]store.PolicyObject) []store.PolicyWrite {
		return []store.PolicyWrite{s.policyWrite(p, cur, !strings.Contains(src, "subjects"))}
	})
	return nil, err
}

// policyWrite is the store write of p. With keepSubjects (input in Vault's
// syntax, which has no subjects) the stored policy keeps the subjects it
// had, so writing a policy through Vault's API does not silently drop
// the identities it applies to.
func (s *Service) policyWrite(p acl.Policy, cur map[string]store.PolicyObject, keepSubjects bool) store.PolicyWrite {
	if o, ok := cur[p.Name]; ok && keepSubjects {
		var old acl.Policy
		if json.Unmarshal(o.Raw, &old) == nil {
			p.Subjects = old.Subjects
			if p.Description == "" {
				p.Description = old.Description
			}
		}
	}
	return store.PolicyWrite{PolicyRef: refOf(p.Name), Raw: jsonSpec(p)}
}

func (s *Service) policyApply(rq *req) (*envelope, error) {
	raw := rq.body.raw("files")
	dry := rq.body.boolean("dry_run")
	if err := rq.body.done(); err != nil {
		return nil, err
	}
	var files []PolicyFile
	if raw == nil || json.Unmarshal(raw, &files) != nil || len(files) == 0 || len(files) > 1000 {
		return nil, badRequest("files: want 1 to 1000 {name, content} objects")
	}
	var docs []acl.Policy
	seen := map[string]int{}
	for i, f := range files {
		for j, part := range splitYAMLDocuments(f.Content) {
			p, err := acl.ParseDocument(f.Policy, []byte(part))
			if err != nil {
				return nil, badRequest("files[%d] %s, document %d: %v", i, f.Name, j+1, err)
			}
			if prev, dup := seen[p.Name]; dup {
				return nil, badRequest("files[%d]: policy %q is also in files[%d]", i, p.Name, prev)
			}
			seen[p.Name] = i
			docs = append(docs, p)
		}
	}
	res, err := s.writePolicies(rq, "apply", 0, dry, func(cur map[string]store.PolicyObject) []store.PolicyWrite {
		out := make([]store.PolicyWrite, len(docs))
		for i, p := range docs {
			out[i] = store.PolicyWrite{PolicyRef: refOf(p.Name), Raw: jsonSpec(p)}
		}
		return out
	})
	if err != nil {
		return nil, err
	}
	return data(res), nil
}

// splitYAMLDocuments splits on "---" lines; HCL and JSON are one document.
func splitYAMLDocuments(s string) []string {
	var out []string
	var cur []string
	for _, line := range strings.Split(s, "\n") {
		if strings.TrimRight(line, " \t\r") == "---" {
			if strings.TrimSpace(strings.Join(cur, "\n")) != "" {
				out = append(out, strings.Join(cur, "\n"))
			}
			cur = nil
			continue
		}
		cur = append(cur, line)
	}
	if strings.TrimSpace(strings.Join(cur, "\n")) != "" || len(out) == 0 {
		out = append(out, strings.Join(cur, "\n"))
	}
	return out
}

var errDryRun = errors.New("dry run")

// writePolicies writes one new version of the access policy set with the
// request's audit record, through the store's versioned policy machinery.
func (s *Service) writePolicies(rq *req, action string, source uint64, dry bool, build func(cur map[string]store.PolicyObject) []store.PolicyWrite) (PolicyChangeResult, error) {
	res := PolicyChangeResult{Changes: []store.PolicyChange{}}
	wrote := false
	err := s.db.Tx(rq.ctx, func(tx *sql.Tx) error {
		if err := s.db.LockPoliciesIn(rq.ctx, tx, store.SecretsPolicies); err != nil {
			return err
		}
		ver, objs, err := s.db.PolicySetIn(rq.ctx, tx, store.SecretsPolicies, 0)
		if err != nil {
			return err
		}
		cur := map[string]store.PolicyObject{}
		byRef := map[store.PolicyRef]store.PolicyObject{}
		for _, o := range objs {
			cur[o.Name], byRef[o.PolicyRef] = o, o
		}
		writes := build(cur)
		if dry {
			res.Version, res.DryRun, res.Changes = ver, true, store.PlannedChanges(byRef, writes)
			return errDryRun
		}
		if len(writes) == 0 {
			res.Version = ver
			return nil
		}
		pv, err := s.db.WritePoliciesIn(rq.ctx, tx, store.SecretsPolicies, rq.tok.actor(), action, source, writes, s.now())
		if err != nil {
			return err
		}
		res.Version, res.Changes = pv.Version, pv.Changes
		var names []string
		for _, c := range pv.Changes {
			names = append(names, c.Op+" "+c.Name)
		}
		rq.details["policy_version"] = strconv.FormatUint(pv.Version, 10)
		rq.details["changes"] = strings.Join(names, "; ")
		rq.details["action"] = action
		wrote = true
		return s.cfg.Audit.AppendTx(rq.ctx, tx, rq.event("success"))
	})
	if errors.Is(err, errDryRun) {
		return res, nil
	}
	if err == nil && wrote {
		rq.audited = true
	}
	slices.SortFunc(res.Changes, func(a, b store.PolicyChange) int { return strings.Compare(a.Name, b.Name) })
	return res, err
}
