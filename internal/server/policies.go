package server

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// Policy admin API paths.
const (
	PathAdminPolicies        = "/v1/admin/policies"          // GET ?version&kind&namespace&name, POST PolicyApplyRequest
	PathAdminPoliciesDelete  = "/v1/admin/policies/delete"   // POST PolicyDeleteRequest
	PathAdminPolicyHistory   = "/v1/admin/policies/history"  // GET ?before&limit
	PathAdminPolicyRollback  = "/v1/admin/policies/rollback" // POST PolicyRollbackRequest
	PathAdminPolicyStatus    = "/v1/admin/policies/status"   // GET PolicyStatus
	maxPolicyBody            = policy.MaxInputSize + 1<<20
	maxPolicyFiles           = 1000
	maxPolicyRefsInOneDelete = 10000
)

// PolicyFile is one file of policies: multi-document YAML or JSON, a Rego
// module (a Name ending in .rego: applied under its base name as module
// ID) or data (a Name whose base is data.json or data.yaml: a JSON or
// YAML object whose top-level keys each replace the data document of that
// key). See policy.PolicyFileKind.
type PolicyFile struct {
	// Name appears in error messages ("policies.yaml: document 2, line 14: ...").
	Name    string `json:"name,omitempty"`
	Content string `json:"content"`
}

// PolicyApplyRequest applies the documents of Files as one new version:
// each document is created or replaces the one with its kind, namespace
// and name; others stay. DryRun validates and reports without writing.
type PolicyApplyRequest struct {
	Files  []PolicyFile `json:"files"`
	DryRun bool         `json:"dry_run,omitempty"`
}

// PolicyChangeResult answers apply, delete and rollback.
type PolicyChangeResult struct {
	// Version is the new policy version, or the current one when nothing
	// changed (Changes empty).
	Version  uint64               `json:"version"`
	Changes  []store.PolicyChange `json:"changes"`
	Warnings []string             `json:"warnings,omitempty"`
	DryRun   bool                 `json:"dry_run,omitempty"`
}

// PolicyApplyResponse is the answer to an apply (the same shape as delete
// and rollback answers).
type PolicyApplyResponse = PolicyChangeResult

// PolicyDeleteRequest deletes objects as one new version.
type PolicyDeleteRequest struct {
	Objects []store.PolicyRef `json:"objects"`
}

// PolicyRollbackRequest makes the set of an earlier version current again,
// as a new version.
type PolicyRollbackRequest struct {
	Version uint64 `json:"version"`
}

// PolicySetResponse is a policy set at a version.
type PolicySetResponse struct {
	Version   uint64            `json:"version"`
	Documents []json.RawMessage `json:"documents"`
	// Modules and Data are the Rego modules and data documents.
	Modules []wire.RegoModule   `json:"modules,omitempty"`
	Data    []wire.DataDocument `json:"data,omitempty"`
}

// PolicyStatus says which node runs which policy version. Only nodes that
// enforce policy count toward convergence: those whose last ack named an
// enforcing component (wire.Ack.Component "sidecar" or "gateway"), and
// those that have not acknowledged anything yet, since they may be either.
// Agents receive the policy set on their watch stream too but enforce
// nothing, so whichever version they last saw says nothing about what the
// mesh enforces; they are listed in NotEnforcing and never counted.
type PolicyStatus struct {
	Version uint64 `json:"version"`
	// Converged: every connected node in Nodes acknowledged Version
	// (revoked nodes are never connected).
	Converged bool `json:"converged"`
	// Connected and AtVersion count the connected nodes of Nodes, and
	// those of them that run Version.
	Connected int `json:"connected"`
	AtVersion int `json:"at_version"`
	// Nodes are the enforcing nodes (and those not yet acknowledged).
	Nodes []PolicyNodeStatus `json:"nodes"`
	// NotEnforcing are nodes whose component does not enforce policy
	// (agents), for reference.
	NotEnforcing []PolicyNodeStatus `json:"not_enforcing"`
}

// enforcingComponents are the wire.Ack components that enforce policy.
var enforcingComponents = []string{"sidecar", "gateway"}

// enforcesPolicy reports whether a node whose last ack named component
// counts toward policy convergence ("" is a node that has not acknowledged
// anything yet: counted, so a new sidecar holds convergence back until it
// reports what it runs).
func enforcesPolicy(component string) bool {
	return component == "" || slices.Contains(enforcingComponents, component)
}

// PolicyNodeStatus is one node's policy state.
type PolicyNodeStatus struct {
	SPIFFEID      string    `json:"spiffe_id"`
	Component     string    `json:"component,omitempty"`
	PolicyVersion uint64    `json:"policy_version"`
	Current       bool      `json:"current"`
	Connected     bool      `json:"connected"`
	LastAck       time.Time `json:"last_ack,omitzero"`
	// Revocation: a revoked node is not connected and does not count
	// toward convergence.
	Revocation
}

func (s *Server) policyRoutes() {
	m := s.mux
	m.Handle("GET "+PathAdminPolicies, s.admin(s.getPolicies))
	m.Handle("POST "+PathAdminPolicies, s.adminLimit(maxPolicyBody, s.applyPolicies))
	m.Handle("POST "+PathAdminPoliciesDelete, s.admin(s.deletePolicies))
	m.Handle("GET "+PathAdminPolicyHistory, s.admin(s.policyHistory))
	m.Handle("POST "+PathAdminPolicyRollback, s.admin(s.rollbackPolicies))
	m.Handle("GET "+PathAdminPolicyStatus, s.admin(s.policyStatus))
}

// policyCacheEntry is the policy set loaded for a policies-section version.
type policyCacheEntry struct {
	key uint64
	set *wire.PolicySet
}

// cachedPolicySet returns the policy set for the policies section at
// version key, loading it once per change instead of once per stream. The
// set returned may be newer than key (loaded after a later change), never
// older; streams treat it as read-only.
//
// When a change wakes thousands of streams at once, one of them loads the
// set and the others wait for it: without the lock every stream that
// missed the cache queried the store (measured with 10,000 streams: the
// policy push's p99 was seconds of queued identical queries).
func (s *Server) cachedPolicySet(ctx context.Context, key uint64) (*wire.PolicySet, error) {
	if c := s.policyCache.Load(); c != nil && c.key == key && key != 0 {
		return c.set, nil
	}
	s.policyLoad.Lock()
	defer s.policyLoad.Unlock()
	if c := s.policyCache.Load(); c != nil && c.key == key && key != 0 {
		return c.set, nil
	}
	ps, err := s.policySet(ctx)
	if err != nil {
		return nil, err
	}
	s.policyCache.Store(&policyCacheEntry{key: key, set: ps})
	return ps, nil
}

// policySet is the watch stream's policies section: the current set with
// its policy version (an empty set at version 0 before any policy).
func (s *Server) policySet(ctx context.Context) (*wire.PolicySet, error) {
	v, objs, err := s.db.PolicySet(ctx, s.db.SQL(), 0)
	if err != nil {
		return nil, err
	}
	ps, err := wirePolicySet(v, objs)
	if err != nil {
		return nil, fmt.Errorf("server: the stored policy set is unreadable: %w", err)
	}
	return ps, nil
}

// wirePolicySet sorts stored objects into a wire.PolicySet: documents,
// Rego modules and data documents.
func wirePolicySet(version uint64, objs []store.PolicyObject) (*wire.PolicySet, error) {
	ps := &wire.PolicySet{Version: version, Documents: []json.RawMessage{}}
	for _, o := range objs {
		switch o.Kind {
		case policy.KindRegoModule:
			var m wire.RegoModule
			if err := json.Unmarshal(o.Raw, &m); err != nil {
				return nil, fmt.Errorf("module %q: %w", o.Name, err)
			}
			ps.Modules = append(ps.Modules, m)
		case policy.KindRegoData:
			ps.Data = append(ps.Data, wire.DataDocument{Key: o.Name, Value: o.Raw})
		default:
			ps.Documents = append(ps.Documents, o.Raw)
		}
	}
	return ps, nil
}

// moduleObject and dataObject are the stored forms of a Rego module and
// a data document.
func moduleObject(m wire.RegoModule) (store.PolicyWrite, error) {
	raw, err := json.Marshal(m)
	return store.PolicyWrite{PolicyRef: store.PolicyRef{Kind: policy.KindRegoModule, Name: m.ID}, Raw: raw}, err
}

func dataObject(d wire.DataDocument) store.PolicyWrite {
	return store.PolicyWrite{PolicyRef: store.PolicyRef{Kind: policy.KindRegoData, Name: d.Key}, Raw: d.Value}
}

// compileObjects compiles a whole stored set (documents, modules and
// data) as a sidecar would: what does not compile is refused before it is
// written.
func compileObjects(objs map[store.PolicyRef]json.RawMessage) error {
	list := make([]store.PolicyObject, 0, len(objs))
	for ref, raw := range objs {
		list = append(list, store.PolicyObject{PolicyRef: ref, Raw: raw})
	}
	slices.SortFunc(list, func(a, b store.PolicyObject) int {
		return strings.Compare(a.Kind+"\x00"+a.Namespace+"\x00"+a.Name, b.Kind+"\x00"+b.Namespace+"\x00"+b.Name)
	})
	ps, err := wirePolicySet(0, list)
	if err != nil {
		return err
	}
	docs, err := policy.ParseJSONDocuments(ps.Documents)
	if err != nil {
		// What a change writes was parsed on the way in, so what fails
		// here is a stored object the loader now refuses. It stays
		// refused (a sidecar refuses the version too; read leniently an
		// empty from would mean any source); the way out is to replace
		// or delete it.
		return fmt.Errorf("%w: a stored policy object no longer validates (re-apply a corrected version or delete it): %v", store.ErrConflict, err)
	}
	var opts policy.Options
	if len(ps.Modules) > 0 || len(ps.Data) > 0 {
		if opts.Rego, err = policy.CompileRego(ps.Modules, ps.Data); err != nil {
			return policyErrors(err)
		}
	}
	if _, err := policy.Compile(docs, opts); err != nil {
		return policyErrors(err)
	}
	return nil
}

// regoInvalid is a 400 (it unwraps to a *badRequest) that keeps OPA's
// errors for the OPA-compatible API.
type regoInvalid struct {
	br *badRequest
	re *policy.RegoError
}

func (e *regoInvalid) Error() string   { return e.br.msg }
func (e *regoInvalid) Unwrap() []error { return []error{e.br, e.re} }

// validateJWTRules checks every RequestAuthentication jwtRule of docs with
// the verifier's own validation (authn.ValidateRule), which knows more than
// the policy loader can without importing authn: usable keys in an inline
// jwks, https-only jwksUri, an issuer fit for discovery, timeouts, header,
// parameter and cookie names. A rule the sidecar's verifier would refuse is
// refused at apply (a *badRequest naming the document and field, nothing
// written) instead of failing every token on the first request.
func validateJWTRules(docs []policy.Document) error {
	var errs []error
	for i := range docs {
		d := &docs[i]
		ra, ok := d.Spec.(*securityv1beta1.RequestAuthentication)
		if !ok {
			continue
		}
		for j, r := range ra.GetJwtRules() {
			if err := authn.ValidateRule(r); err != nil {
				errs = append(errs, &policy.ParseError{Source: d.Source, Document: d.Index, Line: d.Line, Object: d.Kind + " " + d.Ref(),
					Path: fmt.Sprintf("spec.jwtRules[%d]", j), Msg: strings.TrimPrefix(err.Error(), "authn: ")})
				break // one error per document, as the loader reports
			}
		}
	}
	if len(errs) > 0 {
		return policyErrors(errors.Join(errs...))
	}
	return nil
}

// policyErrors turns a loader or compiler error into 400 messages, one per
// rejected document (the loader joins them).
func policyErrors(err error) error {
	msg := strings.TrimPrefix(err.Error(), "policy: ")
	var re *policy.RegoError
	if errors.As(err, &re) {
		return &regoInvalid{br: &badRequest{msg: msg}, re: re}
	}
	return &badRequest{msg: msg}
}

func refOf(d *policy.Document) store.PolicyRef {
	return store.PolicyRef{Kind: d.Kind, Namespace: d.Namespace, Name: d.Name}
}

// loadSet parses stored objects back into documents (not modules and
// data), for compiling a candidate set.
func loadSet(objs []store.PolicyObject) ([]policy.Document, error) {
	raws := make([]json.RawMessage, 0, len(objs))
	for _, o := range objs {
		if o.Kind != policy.KindRegoModule && o.Kind != policy.KindRegoData {
			raws = append(raws, o.Raw)
		}
	}
	docs, err := policy.ParseJSONDocuments(raws)
	if err != nil {
		return nil, fmt.Errorf("server: the stored policy set no longer validates: %w", err)
	}
	return docs, nil
}

// writePolicySet runs one policy change: lock, read the current set,
// build the writes with build, compile the result, write it as a new
// version with its audit record, and tell the watch streams.
func (s *Server) writePolicySet(c *adminCall, action string, source uint64, dryRun bool,
	build func(byRef map[store.PolicyRef]store.PolicyObject) ([]store.PolicyWrite, error)) (PolicyChangeResult, error) {
	var res PolicyChangeResult
	errDryRun := errors.New("dry run")
	err := s.db.Tx(c.ctx, func(tx *sql.Tx) error {
		if err := s.db.LockPolicies(c.ctx, tx); err != nil {
			return err
		}
		cur, objs, err := s.db.PolicySet(c.ctx, tx, 0)
		if err != nil {
			return err
		}
		// The stored set is not parsed here: an object stored before the
		// loader refused it (an empty from written before empty lists
		// were refused, say) must not block the change that replaces or
		// deletes it. The merged set below is checked whole instead.
		byRef := map[store.PolicyRef]store.PolicyObject{}
		for _, o := range objs {
			byRef[o.PolicyRef] = o
		}
		writes, err := build(byRef)
		if err != nil {
			return err
		}
		// The set as it will be, compiled whole as a sidecar compiles it:
		// documents with the Rego modules and data they run against.
		merged := make(map[store.PolicyRef]json.RawMessage, len(byRef)+len(writes))
		for ref, o := range byRef {
			merged[ref] = o.Raw
		}
		for _, w := range writes {
			if w.Raw == nil {
				delete(merged, w.PolicyRef)
			} else {
				merged[w.PolicyRef] = w.Raw
			}
		}
		if err := compileObjects(merged); err != nil {
			return err
		}
		if dryRun {
			res.Version, res.Changes = cur, store.PlannedChanges(byRef, writes)
			return errDryRun // roll back: a dry run writes nothing
		}
		pv, err := s.db.WritePolicies(c.ctx, tx, c.actor, action, source, writes, s.now())
		if err != nil {
			return err
		}
		res.Version, res.Changes = pv.Version, pv.Changes
		if len(pv.Changes) == 0 {
			return nil
		}
		details := map[string]string{"changes": strconv.Itoa(len(pv.Changes)), "documents": strconv.Itoa(pv.Documents)}
		var names []string
		for _, ch := range pv.Changes {
			names = append(names, ch.Op+" "+ch.PolicyRef.String())
		}
		details["objects"] = strings.Join(names, "; ")
		if source > 0 {
			details["source_version"] = strconv.FormatUint(source, 10)
		}
		kind := map[string]string{"apply": audit.KindPolicyApply, "delete": audit.KindPolicyDelete, "rollback": audit.KindPolicyRollback}[action]
		return s.audit.AppendTx(c.ctx, tx, c.event(kind, "policy version "+strconv.FormatUint(pv.Version, 10), details))
	})
	if errors.Is(err, errDryRun) {
		res.DryRun = true
		if res.Changes == nil {
			res.Changes = []store.PolicyChange{}
		}
		return res, nil
	}
	if err != nil {
		return res, err
	}
	if len(res.Changes) > 0 {
		c.audited = true
		s.changed(c.ctx)
	}
	return res, nil
}

func (s *Server) applyPolicies(c *adminCall) {
	var in PolicyApplyRequest
	if err := c.decode(&in); err != nil {
		c.fail(err)
		return
	}
	if len(in.Files) == 0 || len(in.Files) > maxPolicyFiles {
		c.fail(badf("files: want 1 to %d", maxPolicyFiles))
		return
	}
	var docs []policy.Document
	var rego []store.PolicyWrite
	var warnings []string
	seen := map[store.PolicyRef]string{}
	for i, f := range in.Files {
		name := f.Name
		if name == "" {
			name = fmt.Sprintf("files[%d]", i)
		}
		ws, isRego, err := regoWrites(name, f.Content)
		if err != nil {
			c.fail(err)
			return
		}
		if isRego {
			for _, w := range ws {
				if prev, dup := seen[w.PolicyRef]; dup {
					c.fail(badf("%s: %s is also in %s", name, w.PolicyRef, prev))
					return
				}
				seen[w.PolicyRef] = name
			}
			rego = append(rego, ws...)
			continue
		}
		ds, err := policy.ParseSource(name, strings.NewReader(f.Content))
		if err != nil {
			c.fail(policyErrors(err))
			return
		}
		for j := range ds {
			d := &ds[j]
			ref := refOf(d)
			if prev, dup := seen[ref]; dup {
				c.fail(badf("%s: document %d, line %d: %s is also in %s", name, d.Index, d.Line, ref, prev))
				return
			}
			seen[ref] = fmt.Sprintf("%s line %d", name, d.Line)
			for _, w := range d.Warnings {
				warnings = append(warnings, fmt.Sprintf("%s: %s: %s", name, ref, w))
			}
		}
		docs = append(docs, ds...)
	}
	if len(docs) == 0 && len(rego) == 0 {
		c.fail(badf("files: no policy documents found"))
		return
	}
	if err := validateJWTRules(docs); err != nil {
		c.fail(err)
		return
	}
	res, err := s.writePolicySet(c, "apply", 0, in.DryRun, func(map[store.PolicyRef]store.PolicyObject) ([]store.PolicyWrite, error) {
		out := make([]store.PolicyWrite, 0, len(docs)+len(rego))
		for i := range docs {
			out = append(out, store.PolicyWrite{PolicyRef: refOf(&docs[i]), Raw: docs[i].Raw})
		}
		return append(out, rego...), nil
	})
	if err != nil {
		c.fail(err)
		return
	}
	res.Warnings = warnings
	c.reply(http.StatusOK, res)
}

var policyKinds = map[string]bool{policy.KindAuthorizationPolicy: true, policy.KindPeerAuthentication: true, policy.KindRequestAuthentication: true, policy.KindRegoProvider: true}

// regoKinds are stored without a namespace.
var regoKinds = map[string]bool{policy.KindRegoModule: true, policy.KindRegoData: true}

// regoWrites turns a Rego module file or a data file into the writes that
// apply it; isRego is false for a file of documents.
func regoWrites(name, content string) (ws []store.PolicyWrite, isRego bool, err error) {
	kind, _ := policy.PolicyFileKind(name)
	switch kind {
	case policy.FileRego:
		m := wire.RegoModule{ID: policy.RegoModuleID(name), Source: content}
		if err := policy.CheckRegoModule(m.ID, m.Source); err != nil {
			return nil, true, policyErrors(err)
		}
		w, err := moduleObject(m)
		return []store.PolicyWrite{w}, true, err
	case policy.FileData:
		docs, err := policy.ParseDataFile(name, []byte(content))
		if err != nil {
			return nil, true, policyErrors(err)
		}
		for _, d := range docs {
			ws = append(ws, dataObject(d))
		}
		return ws, true, nil
	}
	return nil, false, nil
}

func (s *Server) deletePolicies(c *adminCall) {
	var in PolicyDeleteRequest
	if err := c.decode(&in); err != nil {
		c.fail(err)
		return
	}
	if len(in.Objects) == 0 || len(in.Objects) > maxPolicyRefsInOneDelete {
		c.fail(badf("objects: want 1 to %d", maxPolicyRefsInOneDelete))
		return
	}
	seen := map[store.PolicyRef]bool{}
	for i, r := range in.Objects {
		switch {
		case regoKinds[r.Kind] && r.Namespace != "":
			c.fail(badf("objects[%d].namespace: a %s has no namespace", i, r.Kind))
			return
		case regoKinds[r.Kind]:
		case !policyKinds[r.Kind]:
			c.fail(badf("objects[%d].kind %q: want AuthorizationPolicy, PeerAuthentication, RequestAuthentication, RegoProvider, RegoModule or RegoData", i, r.Kind))
			return
		case !dnsLabel().MatchString(r.Namespace):
			c.fail(badf("objects[%d].namespace %q: must be a namespace name", i, r.Namespace))
			return
		case r.Name == "" || len(r.Name) > 253:
			c.fail(badf("objects[%d].name: required", i))
			return
		case seen[r]:
			c.fail(badf("objects[%d]: %s listed twice", i, r))
			return
		}
		seen[r] = true
	}
	res, err := s.writePolicySet(c, "delete", 0, false, func(map[store.PolicyRef]store.PolicyObject) ([]store.PolicyWrite, error) {
		out := make([]store.PolicyWrite, len(in.Objects))
		for i, r := range in.Objects {
			out[i] = store.PolicyWrite{PolicyRef: r}
		}
		return out, nil
	})
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, res)
}

func (s *Server) rollbackPolicies(c *adminCall) {
	var in PolicyRollbackRequest
	if err := c.decode(&in); err != nil {
		c.fail(err)
		return
	}
	if in.Version == 0 {
		c.fail(badf("version: required (see \"moatless policy history\")"))
		return
	}
	// The version to go back to is read and checked before the write's
	// transaction: a past version never changes, and a read through the
	// pool from inside that transaction held two connections, so as many
	// rollbacks at once as the pool has connections (4 on SQLite) waited
	// on each other for ever.
	_, target, err := s.db.PolicySet(c.ctx, s.db.SQL(), in.Version)
	if err != nil {
		c.fail(err)
		return
	}
	targetDocs, err := loadSet(target)
	if err == nil {
		err = validateJWTRules(targetDocs)
	}
	if err != nil {
		c.fail(badf("version %d no longer validates: %v", in.Version, err))
		return
	}
	res, err := s.writePolicySet(c, "rollback", in.Version, false, func(byRef map[store.PolicyRef]store.PolicyObject) ([]store.PolicyWrite, error) {
		var out []store.PolicyWrite
		keep := map[store.PolicyRef]bool{}
		for _, o := range target {
			keep[o.PolicyRef] = true
			out = append(out, store.PolicyWrite{PolicyRef: o.PolicyRef, Raw: o.Raw})
		}
		for ref := range byRef {
			if !keep[ref] {
				out = append(out, store.PolicyWrite{PolicyRef: ref})
			}
		}
		return out, nil
	})
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, res)
}

func (s *Server) getPolicies(c *adminCall) {
	q, err := c.query("version", "kind", "namespace", "name")
	if err != nil {
		c.fail(err)
		return
	}
	var version uint64
	if v := q.Get("version"); v != "" {
		if version, err = strconv.ParseUint(v, 10, 63); err != nil || version == 0 {
			c.fail(badf("version %q: want a policy version number", v))
			return
		}
	}
	ver, objs, err := s.db.PolicySet(c.ctx, s.db.SQL(), version)
	if err != nil {
		c.fail(err)
		return
	}
	var picked []store.PolicyObject
	for _, o := range objs {
		if k := q.Get("kind"); k != "" && !strings.EqualFold(k, o.Kind) {
			continue
		}
		if n := q.Get("namespace"); n != "" && n != o.Namespace {
			continue
		}
		if n := q.Get("name"); n != "" && n != o.Name {
			continue
		}
		picked = append(picked, o)
	}
	ps, err := wirePolicySet(ver, picked)
	if err != nil {
		c.fail(err)
		return
	}
	out := PolicySetResponse{Version: ver, Documents: ps.Documents, Modules: ps.Modules, Data: ps.Data}
	if q.Get("name") != "" && len(picked) == 0 {
		c.fail(fmt.Errorf("%w: no policy named %q at version %d", store.ErrNotFound, q.Get("name"), ver))
		return
	}
	c.reply(http.StatusOK, out)
}

func (s *Server) policyHistory(c *adminCall) {
	before, limit, err := c.pageQuery(50, "a version number")
	if err != nil {
		c.fail(err)
		return
	}
	h, err := s.db.PolicyHistory(c.ctx, before, limit)
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, h)
}

func (s *Server) policyStatus(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	st, err := s.policyStatusOf(c.ctx)
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, st)
}

// policyStatusOf says which node runs which policy version, for the admin
// API and the dashboard.
func (s *Server) policyStatusOf(ctx context.Context) (PolicyStatus, error) {
	cur, err := s.db.CurrentPolicyVersion(ctx, s.db.SQL())
	if err != nil {
		return PolicyStatus{}, err
	}
	nodes, err := s.db.Nodes(ctx)
	if err != nil {
		return PolicyStatus{}, err
	}
	st := PolicyStatus{Version: cur, Nodes: []PolicyNodeStatus{}, NotEnforcing: []PolicyNodeStatus{}}
	now := s.now()
	for _, n := range nodes {
		rev := s.nodeRevocation(n)
		ns := PolicyNodeStatus{SPIFFEID: n.SPIFFEID, Component: n.Component, PolicyVersion: n.PolicyVersion,
			Current: n.PolicyVersion == cur, LastAck: n.LastAck, Revocation: rev,
			Connected: s.nodeConnected(n, rev.Revoked, now)}
		if !enforcesPolicy(n.Component) {
			st.NotEnforcing = append(st.NotEnforcing, ns)
			continue
		}
		if ns.Connected {
			st.Connected++
			if ns.Current {
				st.AtVersion++
			}
		}
		st.Nodes = append(st.Nodes, ns)
	}
	st.Converged = st.AtVersion == st.Connected
	return st, nil
}
