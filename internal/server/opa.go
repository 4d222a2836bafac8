package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/opaapi"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// opaRoutes serves OPA's REST API (Data and Policy APIs, package opaapi)
// over the policy store: reads evaluate the version in force, writes go
// through writePolicySet like "moatless policy apply" (one new policy
// version each, compiled whole before it is written, audited, pushed).
// Every call needs the admin credential, as an OPA server configured with
// --authentication=token needs its bearer token.
func (s *Server) opaRoutes() {
	h := &opaapi.Handler{Rego: s.currentRego, Writer: opaWriter{s}, Logger: s.log, MaxWriteSize: maxPolicyBody}
	h.Register(s.mux, s.opaAuth)
}

type opaActorKey struct{}

// opaAuth authenticates an OPA API call as an admin call (the admin token
// as "Authorization: Bearer", or an admin client certificate) and answers
// refusals in OPA's shape, each audited like a refused admin call.
func (s *Server) opaAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		actor, status, msg := s.authenticateAdmin(r)
		if status == 0 {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), opaActorKey{}, actor)))
			return
		}
		if status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="moatless"`)
		}
		if actor == "anonymous" && !s.refusals.allow(s.now()) {
			s.metrics.adminRequests.WithLabelValues("rate_limited").Inc()
			writeOPAError(w, opaapi.Errorf(http.StatusTooManyRequests, opaapi.CodeUnauthorized, "too many refused requests; retry later"))
			return
		}
		ev := audit.Event{Kind: audit.KindAdminCall, Actor: actor, Subject: r.Method + " " + r.URL.Path, Outcome: audit.Denied,
			Details: map[string]string{"method": r.Method, "path": r.URL.Path, "status": strconv.Itoa(status), "remote": remoteHost(r), "error": msg}}
		if err := s.audit.Append(r.Context(), ev); err != nil {
			s.log.Error("audit log unavailable", "err", err)
		}
		s.metrics.adminRequests.WithLabelValues("denied").Inc()
		writeOPAError(w, opaapi.Errorf(status, opaapi.CodeUnauthorized, "%s", msg))
	})
}

func writeOPAError(w http.ResponseWriter, e *opaapi.Error) {
	b, _ := json.Marshal(e)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	w.Write(append(b, '\n'))
}

// regoCache is the compiled Rego of one policy version, for the Data
// API's reads.
type regoCache struct {
	mu      sync.Mutex
	version uint64
	rego    *policy.Rego
}

// currentRego compiles the Rego modules and data in force, once per
// policy version. A version that does not compile (it was refused at
// apply, so only a store edited behind the server's back) serves as
// empty, and the error is logged.
func (s *Server) currentRego() *policy.Rego {
	ctx := context.Background()
	v, err := s.db.CurrentPolicyVersion(ctx, s.db.SQL())
	if err != nil {
		s.log.Error("OPA API: read the policy version", "err", err)
		return nil
	}
	s.opaRego.mu.Lock()
	defer s.opaRego.mu.Unlock()
	if s.opaRego.rego != nil && s.opaRego.version == v {
		return s.opaRego.rego
	}
	ver, objs, err := s.db.PolicySet(ctx, s.db.SQL(), v)
	if err != nil {
		s.log.Error("OPA API: read the policy set", "err", err)
		return nil
	}
	ps, err := wirePolicySet(ver, objs)
	if err == nil {
		var r *policy.Rego
		if r, err = policy.CompileRego(ps.Modules, ps.Data); err == nil {
			s.opaRego.version, s.opaRego.rego = ver, r
			return r
		}
	}
	s.log.Error("OPA API: the Rego modules in force do not compile", "version", ver, "err", err)
	return nil
}

// opaWriter stores the OPA API's writes as policy versions.
type opaWriter struct{ s *Server }

// call is the admin call an OPA write runs as: its actor, audit records
// and context.
func (o opaWriter) call(r *http.Request) *adminCall {
	actor, _ := r.Context().Value(opaActorKey{}).(string)
	return &adminCall{s: o.s, r: r, ctx: r.Context(), actor: actor, limit: maxPolicyBody}
}

// write runs one change; build gets the objects in force.
func (o opaWriter) write(r *http.Request, action string, build func(byRef map[store.PolicyRef]store.PolicyObject) ([]store.PolicyWrite, error)) error {
	_, err := o.s.writePolicySet(o.call(r), action, 0, false, func(byRef map[store.PolicyRef]store.PolicyObject) ([]store.PolicyWrite, error) {
		return build(byRef)
	})
	var br *badRequest
	var re *policy.RegoError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &re):
		return opaapi.CompileError(re)
	case errors.As(err, &br):
		return opaapi.Errorf(http.StatusBadRequest, opaapi.CodeInvalidParameter, "%s", br.msg)
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("%s: %w", strings.TrimPrefix(err.Error(), "store: "), opaapi.ErrNotFound)
	}
	return err
}

func dataRef(key string) store.PolicyRef {
	return store.PolicyRef{Kind: policy.KindRegoData, Name: key}
}

// PutData writes value at path: the whole of data (an object whose keys
// become the data documents, the others deleted), a data document, or a
// place inside one (objects on the way are created).
func (o opaWriter) PutData(r *http.Request, path []string, value any, ifNoneMatch bool) error {
	return o.write(r, "apply", func(byRef map[store.PolicyRef]store.PolicyObject) ([]store.PolicyWrite, error) {
		if len(path) == 0 {
			docs, err := policy.SplitData(value)
			if err != nil {
				return nil, opaapi.Errorf(http.StatusBadRequest, opaapi.CodeInvalidParameter, "%v", err)
			}
			if ifNoneMatch && hasData(byRef) {
				return nil, opaapi.ErrExists
			}
			keep := map[string]bool{}
			var out []store.PolicyWrite
			for _, d := range docs {
				keep[d.Key] = true
				out = append(out, dataObject(d))
			}
			for ref := range byRef {
				if ref.Kind == policy.KindRegoData && !keep[ref.Name] {
					out = append(out, store.PolicyWrite{PolicyRef: ref})
				}
			}
			return out, nil
		}
		if err := policy.ValidDataKey(path[0]); err != nil {
			return nil, opaapi.Errorf(http.StatusBadRequest, opaapi.CodeInvalidParameter, "%v", err)
		}
		doc, exists, err := storedData(byRef, path[0])
		if err != nil {
			return nil, err
		}
		if len(path) == 1 {
			if ifNoneMatch && exists {
				return nil, opaapi.ErrExists
			}
			doc = value
		} else {
			if doc == nil {
				doc = map[string]any{}
			}
			present, err := setAt(doc, path[1:], value)
			if err != nil {
				return nil, opaapi.Errorf(http.StatusNotFound, opaapi.CodeNotFound, "storage_not_found_error: %v", err)
			}
			if ifNoneMatch && present {
				return nil, opaapi.ErrExists
			}
		}
		raw, err := json.Marshal(doc)
		if err != nil {
			return nil, err
		}
		return []store.PolicyWrite{dataObject(wire.DataDocument{Key: path[0], Value: raw})}, nil
	})
}

// DeleteData removes the document at path (all of data for the root).
func (o opaWriter) DeleteData(r *http.Request, path []string) error {
	return o.write(r, "delete", func(byRef map[store.PolicyRef]store.PolicyObject) ([]store.PolicyWrite, error) {
		if len(path) == 0 {
			var out []store.PolicyWrite
			for ref := range byRef {
				if ref.Kind == policy.KindRegoData {
					out = append(out, store.PolicyWrite{PolicyRef: ref})
				}
			}
			return out, nil
		}
		doc, exists, err := storedData(byRef, path[0])
		if err != nil {
			return nil, err
		}
		notFound := fmt.Errorf("document data/%s: %w", strings.Join(path, "/"), opaapi.ErrNotFound)
		if !exists {
			return nil, notFound
		}
		if len(path) == 1 {
			return []store.PolicyWrite{{PolicyRef: dataRef(path[0])}}, nil
		}
		if !deleteAt(doc, path[1:]) {
			return nil, notFound
		}
		raw, err := json.Marshal(doc)
		if err != nil {
			return nil, err
		}
		return []store.PolicyWrite{dataObject(wire.DataDocument{Key: path[0], Value: raw})}, nil
	})
}

// PutPolicy creates or replaces the module id.
func (o opaWriter) PutPolicy(r *http.Request, id, source string) error {
	return o.write(r, "apply", func(map[store.PolicyRef]store.PolicyObject) ([]store.PolicyWrite, error) {
		w, err := moduleObject(wire.RegoModule{ID: id, Source: source})
		return []store.PolicyWrite{w}, err
	})
}

// DeletePolicy removes the module id.
func (o opaWriter) DeletePolicy(r *http.Request, id string) error {
	return o.write(r, "delete", func(byRef map[store.PolicyRef]store.PolicyObject) ([]store.PolicyWrite, error) {
		ref := store.PolicyRef{Kind: policy.KindRegoModule, Name: id}
		if _, ok := byRef[ref]; !ok {
			return nil, fmt.Errorf("policy id %q: %w", id, opaapi.ErrNotFound)
		}
		return []store.PolicyWrite{{PolicyRef: ref}}, nil
	})
}

func hasData(byRef map[store.PolicyRef]store.PolicyObject) bool {
	for ref := range byRef {
		if ref.Kind == policy.KindRegoData {
			return true
		}
	}
	return false
}

// storedData decodes the data document key in force.
func storedData(byRef map[store.PolicyRef]store.PolicyObject, key string) (any, bool, error) {
	o, ok := byRef[dataRef(key)]
	if !ok {
		return nil, false, nil
	}
	v, err := policy.ParseDataJSON(strings.NewReader(string(o.Raw)), policy.MaxDataDocumentSize)
	if err != nil {
		return nil, false, fmt.Errorf("server: stored data document %q: %w", key, err)
	}
	return v, true, nil
}

// setAt sets value at path inside doc, creating objects on the way, and
// reports whether something was there. A non-object on the way is an
// error (OPA's storage answers such a write with not found).
func setAt(doc any, path []string, value any) (bool, error) {
	cur, ok := doc.(map[string]any)
	if !ok {
		return false, errors.New("the document is not an object")
	}
	for i, k := range path[:len(path)-1] {
		next, exists := cur[k]
		if !exists {
			n := map[string]any{}
			cur[k], next = n, n
		}
		if cur, ok = next.(map[string]any); !ok {
			return false, fmt.Errorf("%s is not an object", strings.Join(path[:i+1], "/"))
		}
	}
	_, present := cur[path[len(path)-1]]
	cur[path[len(path)-1]] = value
	return present, nil
}

// deleteAt removes path from doc; false when it is not there.
func deleteAt(doc any, path []string) bool {
	cur, ok := doc.(map[string]any)
	for _, k := range path[:len(path)-1] {
		if !ok {
			return false
		}
		cur, ok = cur[k].(map[string]any)
	}
	if !ok {
		return false
	}
	if _, present := cur[path[len(path)-1]]; !present {
		return false
	}
	delete(cur, path[len(path)-1])
	return true
}
