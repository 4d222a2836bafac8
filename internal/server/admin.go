package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/ca"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/ui"
	"github.com/moatless/moatless/internal/wire"
)

// routes registers every built-in handler.
func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /livez", s.livez)
	m.HandleFunc("GET /healthz", s.livez)
	m.HandleFunc("GET /readyz", s.readyz)
	m.Handle("GET /metrics", s.metrics.handler())

	m.HandleFunc("POST "+wire.PathAttest, s.handleAttest)
	m.HandleFunc("POST "+wire.PathRenew, s.handleRenew)
	m.HandleFunc("POST "+wire.PathSignX509, s.handleSignX509)
	m.HandleFunc("POST "+wire.PathSignJWT, s.handleSignJWT)
	m.HandleFunc("GET "+wire.PathWatch, s.handleWatch)
	m.HandleFunc("POST "+wire.PathAck, s.handleAck)
	m.HandleFunc("POST "+wire.PathAudit, s.handleAuditReport)

	m.Handle("GET "+PathAdminEntries, s.admin(s.listEntries))
	m.Handle("POST "+PathAdminEntries, s.admin(s.createEntry))
	m.Handle("GET "+PathAdminEntries+"/{id}", s.admin(s.getEntry))
	m.Handle("PUT "+PathAdminEntries+"/{id}", s.admin(s.updateEntry))
	m.Handle("DELETE "+PathAdminEntries+"/{id}", s.admin(s.deleteEntry))
	m.Handle("GET "+PathAdminJoinTokens, s.admin(s.listJoinTokens))
	m.Handle("POST "+PathAdminJoinTokens, s.admin(s.createJoinToken))
	m.Handle("DELETE "+PathAdminJoinTokens+"/{id}", s.admin(s.deleteJoinToken))
	m.Handle("GET "+PathAdminRevocations, s.admin(s.listRevocations))
	m.Handle("POST "+PathAdminRevocations, s.admin(s.createRevocation))
	m.Handle("DELETE "+PathAdminRevocations, s.admin(s.deleteRevocation))
	m.Handle("GET "+PathAdminCA, s.admin(s.caStatus))
	m.Handle("POST "+PathAdminCARotate, s.admin(s.caRotate))
	m.Handle("POST "+PathAdminCAPrepare, s.admin(s.caStep("prepare")))
	m.Handle("POST "+PathAdminCAActivate, s.admin(s.caStep("activate")))
	m.Handle("POST "+PathAdminCATaint, s.admin(s.caStep("taint")))
	m.Handle("POST "+PathAdminCARevoke, s.admin(s.caStep("revoke")))
	m.Handle("POST "+PathAdminCerts, s.admin(s.issueAdminCert))
	m.Handle("GET "+PathAdminBundle, s.admin(s.getBundle))
	m.Handle("GET "+PathAdminAudit, s.admin(s.listAudit))
	m.Handle("GET "+PathAdminNodes, s.admin(s.listNodes))
	s.policyRoutes()
	s.opaRoutes()
	// Anything else under /v1/admin/ still needs a credential before it
	// learns that it does not exist.
	m.Handle("/v1/admin/", s.admin(func(c *adminCall) {
		c.reply(http.StatusNotFound, errorBody("no such admin endpoint: "+c.r.Method+" "+c.r.URL.Path))
	}))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErrors(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})
}

func errorBody(msgs ...string) map[string][]string { return map[string][]string{"errors": msgs} }

// adminCall is one admin request being served. Handlers set the reply;
// the wrapper audits and writes it.
type adminCall struct {
	s       *Server
	r       *http.Request
	ctx     context.Context
	actor   string
	status  int
	body    any
	audited bool
	errMsg  string
	// limit bounds the body: the route's (admin, adminLimit).
	limit int64
}

func (c *adminCall) reply(status int, body any) {
	c.status, c.body = status, body
	if eb, ok := body.(map[string][]string); ok && len(eb["errors"]) > 0 {
		c.errMsg = eb["errors"][0]
	}
}

// fail maps an error to its status: *badRequest 400, ErrNotFound 404,
// ErrConflict 409, anything else 500 with a generic message (the detail
// goes to the log, not to the caller).
func (c *adminCall) fail(err error) {
	var br *badRequest
	switch {
	case errors.As(err, &br):
		c.reply(http.StatusBadRequest, errorBody(br.msg))
	case errors.Is(err, store.ErrNotFound):
		c.reply(http.StatusNotFound, errorBody(strings.TrimPrefix(err.Error(), "store: ")))
	case errors.Is(err, store.ErrConflict):
		c.reply(http.StatusConflict, errorBody(strings.TrimPrefix(err.Error(), "store: ")))
	case errors.Is(err, ca.ErrInvalidRequest):
		c.reply(http.StatusBadRequest, errorBody(err.Error()))
	case errors.Is(err, ca.ErrUnknownAuthority):
		c.reply(http.StatusNotFound, errorBody(err.Error()))
	case errors.Is(err, ca.ErrAuthorityState), errors.Is(err, ca.ErrTooManyAuthorities), errors.Is(err, ca.ErrStateConflict):
		c.reply(http.StatusConflict, errorBody(err.Error()))
	default:
		c.s.log.Error("admin request failed", "method", c.r.Method, "path", c.r.URL.Path, "err", err)
		c.reply(http.StatusInternalServerError, errorBody("internal error; see the server log"))
	}
}

// event is an audit event of this call with the given kind and subject.
func (c *adminCall) event(kind, subject string, details map[string]string) audit.Event {
	if details == nil {
		details = map[string]string{}
	}
	details["remote"] = remoteHost(c.r)
	viaDashboard(c.ctx, details)
	return audit.Event{Kind: kind, Actor: c.actor, Subject: subject, Outcome: audit.Success, Details: details}
}

// viaDashboard marks the details of an audit record made for a dashboard
// action (ctx carries its ui.Actor) with via=dashboard, the session and
// the browser's address, and returns them; other details are left as
// they are.
func viaDashboard(ctx context.Context, details map[string]string) map[string]string {
	if a, ok := ctx.Value(dashboardActorKey{}).(ui.Actor); ok {
		details["remote"], details["via"], details["session"] = a.Remote, "dashboard", a.Session
	}
	return details
}

// change runs fn in a transaction, appends ev to the audit log in the same
// transaction, and marks the call audited when it commits.
func (c *adminCall) change(fn func(tx *sql.Tx) (audit.Event, error)) error {
	err := c.s.db.Tx(c.ctx, func(tx *sql.Tx) error {
		ev, err := fn(tx)
		if err != nil {
			return err
		}
		return c.s.audit.AppendTx(c.ctx, tx, ev)
	})
	if err == nil {
		c.audited = true
		c.s.changed(c.ctx)
	}
	return err
}

// query returns the URL query after checking it has only the allowed keys,
// each at most once.
func (c *adminCall) query(allowed ...string) (url.Values, error) {
	q := c.r.URL.Query()
	for k, v := range q {
		ok := false
		for _, a := range allowed {
			ok = ok || k == a
		}
		if !ok {
			if len(allowed) == 0 {
				return nil, badf("query parameter %q: this endpoint takes none", k)
			}
			return nil, badf("query parameter %q: unknown (allowed: %s)", k, strings.Join(allowed, ", "))
		}
		if len(v) > 1 {
			return nil, badf("query parameter %q: given more than once", k)
		}
	}
	return q, nil
}

// decode reads the body strictly into v (decodeJSON, bounded by the
// route's limit) after refusing any query parameter: for handlers whose
// whole input is the body. Errors are *badRequest, for fail.
func (c *adminCall) decode(v any) error {
	if _, err := c.query(); err != nil {
		return err
	}
	return decodeJSON(c.r, c.limit, v)
}

// pageQuery reads the paging parameters of a newest-first admin listing,
// ?limit=N&before=S, and refuses any other query parameter (as query does).
// limit defaults to defaultLimit and must be 1 to 1000; before defaults to
// 0 (start at the newest) and must be an unsigned number below 2^63, the
// position S names in the error message (e.g. "a sequence number"). Every
// error is a *badRequest for the caller to pass to fail.
func (c *adminCall) pageQuery(defaultLimit int, position string) (before uint64, limit int, err error) {
	q, err := c.query("before", "limit")
	if err != nil {
		return 0, 0, err
	}
	limit = defaultLimit
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > 1000 {
			return 0, 0, badf("limit %q: want 1 to 1000", v)
		}
	}
	if v := q.Get("before"); v != "" {
		if before, err = strconv.ParseUint(v, 10, 63); err != nil {
			return 0, 0, badf("before %q: want %s", v, position)
		}
	}
	return before, limit, nil
}

// admin wraps an admin handler: it authenticates the caller (admin token
// or admin client certificate), bounds the body, runs h, audits the call
// unless h recorded it with its change, counts it, and writes the reply.
func (s *Server) admin(h func(*adminCall)) http.Handler { return s.adminLimit(MaxAdminBody, h) }

// adminLimit is admin with a body limit of its own (policy sets are larger).
func (s *Server) adminLimit(limit int64, h func(*adminCall)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := &adminCall{s: s, r: r, ctx: r.Context(), limit: limit}
		actor, status, msg := s.authenticateAdmin(r)
		if status != 0 {
			c.actor = actor
			if status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="moatless"`)
			}
			c.reply(status, errorBody(msg))
		} else {
			c.actor = actor
			r.Body = http.MaxBytesReader(w, r.Body, limit)
			h(c)
		}
		if c.status == 0 {
			c.fail(errors.New("handler set no reply"))
		}
		if !c.audited && c.actor == "anonymous" && !s.refusals.allow(s.now()) {
			// An unauthenticated flood: answer without an audit record each.
			s.metrics.adminRequests.WithLabelValues("rate_limited").Inc()
			writeErrors(w, http.StatusTooManyRequests, "too many refused requests; retry later")
			return
		}
		if !c.audited {
			outcome := audit.Success
			switch {
			case c.status == http.StatusUnauthorized || c.status == http.StatusForbidden:
				outcome = audit.Denied
			case c.status >= 500:
				outcome = audit.Error
			case c.status >= 400:
				outcome = audit.Failure
			}
			details := map[string]string{"method": r.Method, "path": r.URL.Path, "status": strconv.Itoa(c.status), "remote": remoteHost(r)}
			if r.URL.RawQuery != "" {
				details["query"] = r.URL.RawQuery
			}
			if c.errMsg != "" {
				details["error"] = c.errMsg
			}
			viaDashboard(c.ctx, details)
			ev := audit.Event{Kind: audit.KindAdminCall, Actor: c.actor, Subject: r.Method + " " + r.URL.Path, Outcome: outcome, Details: details}
			if err := s.audit.Append(c.ctx, ev); err != nil {
				s.log.Error("audit log unavailable: refusing the admin call", "err", err)
				c.status, c.body = http.StatusInternalServerError, errorBody("audit log unavailable; the call was not served")
			}
		}
		switch {
		case c.status == http.StatusUnauthorized || c.status == http.StatusForbidden:
			s.metrics.adminRequests.WithLabelValues("denied").Inc()
		case c.status >= 500:
			s.metrics.adminRequests.WithLabelValues("server_error").Inc()
		case c.status >= 400:
			s.metrics.adminRequests.WithLabelValues("client_error").Inc()
		default:
			s.metrics.adminRequests.WithLabelValues("success").Inc()
		}
		if c.status == http.StatusNoContent {
			w.WriteHeader(c.status)
			return
		}
		writeJSON(w, c.status, c.body)
	})
}

// authenticateAdmin returns the caller's identity, or a status (401/403)
// and message. A presented Authorization header is decisive: a wrong
// token is refused even with a good certificate.
func (s *Server) authenticateAdmin(r *http.Request) (actor string, status int, msg string) {
	if a, ok := r.Context().Value(dashboardActorKey{}).(ui.Actor); ok && a.Name != "" {
		// A dashboard action (ui.go): the dashboard authenticated its
		// session; only server code puts this value in a context.
		return a.Name, 0, ""
	}
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
			return "anonymous", http.StatusUnauthorized, "Authorization must be \"Bearer <admin token>\""
		}
		if !s.checkAdminToken(strings.TrimSpace(tok)) {
			return "anonymous", http.StatusUnauthorized, "admin token is not valid"
		}
		return "admin-token", 0, ""
	}
	return s.adminCert(r)
}

// adminCert authenticates r by an admin client certificate (the admin
// API's and the secrets API's): an X509-SVID of an admin ID that this
// server issued as an admin certificate, on a request no web page made.
func (s *Server) adminCert(r *http.Request) (actor string, status int, msg string) {
	c, err := s.peer(r)
	switch {
	case errors.Is(err, errNoClientCert):
		return "anonymous", http.StatusUnauthorized, "an admin credential is required: the admin token (Authorization: Bearer) or an admin client certificate"
	case err != nil:
		return "anonymous", http.StatusUnauthorized, err.Error()
	}
	if madeByAPage(r) {
		return c.id.String(), http.StatusForbidden, "a client certificate is not accepted on a request a web page made (Origin, Sec-Fetch-Site): use the CLI, or the dashboard"
	}
	if !s.admins[c.id.String()] {
		return c.id.String(), http.StatusForbidden, fmt.Sprintf("%s is not an admin ID of this server", c.id)
	}
	kind, err := s.credentialKind(r.Context(), c)
	if err != nil {
		return c.id.String(), http.StatusServiceUnavailable, "cannot check the client certificate now"
	}
	if kind != store.SVIDKindAdmin {
		return c.id.String(), http.StatusForbidden, "this certificate was not issued as an admin certificate by this server (moatless ca issue-admin)"
	}
	return c.id.String(), 0, ""
}

// madeByAPage reports whether a browser says a web page made r: it has
// an Origin, or Fetch Metadata other than a navigation the user started.
// A client certificate imported into a browser is sent with whatever
// request any page makes, as a cookie is, so it authenticates only
// requests no page made (the CLI, programs; the dashboard has its own
// session and CSRF token). The admin token travels in a header a page of
// another site cannot set.
func madeByAPage(r *http.Request) bool {
	if _, ok := r.Header["Origin"]; ok {
		return true
	}
	site, ok := r.Header["Sec-Fetch-Site"]
	return ok && (len(site) != 1 || site[0] != "none")
}

// newID returns a random UUID (version 4) string.
func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func (s *Server) listEntries(c *adminCall) {
	q, err := c.query("spiffe_id", "parent_id", "namespace", "selector")
	if err != nil {
		c.fail(err)
		return
	}
	f := store.EntryFilter{SPIFFEID: q.Get("spiffe_id"), ParentID: q.Get("parent_id"), Namespace: q.Get("namespace")}
	if sel := q.Get("selector"); sel != "" {
		parsed, err := ParseSelector(sel)
		if err != nil {
			c.fail(badf("selector: %v", err))
			return
		}
		f.Selector = &parsed
	}
	entries, err := s.db.ListEntries(c.ctx, f)
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, entries)
}

func (s *Server) createEntry(c *adminCall) {
	var in EntryRequest
	if err := c.decode(&in); err != nil {
		c.fail(err)
		return
	}
	e, err := s.validateEntry(in)
	if err != nil {
		c.fail(err)
		return
	}
	e.ID = newID()
	err = c.change(func(tx *sql.Tx) (audit.Event, error) {
		var err error
		e, err = s.db.InsertEntry(c.ctx, tx, e)
		return c.event(audit.KindEntryCreate, e.ID, map[string]string{"spiffe_id": e.SPIFFEID, "parent_id": e.ParentID}), err
	})
	if err != nil {
		c.fail(err)
		return
	}
	s.metrics.entries.Inc()
	c.reply(http.StatusCreated, e)
}

func (s *Server) getEntry(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	e, err := s.db.Entry(c.ctx, c.r.PathValue("id"))
	if errors.Is(err, store.ErrNotFound) {
		err = fmt.Errorf("%w: no entry with id %q", store.ErrNotFound, c.r.PathValue("id"))
	}
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, e)
}

// updateEntry replaces an entry (PUT with a whole EntryRequest). With
// ?revision=N it applies only if the entry is still at revision N.
func (s *Server) updateEntry(c *adminCall) {
	q, err := c.query("revision")
	if err != nil {
		c.fail(err)
		return
	}
	var expect uint64
	if v := q.Get("revision"); v != "" {
		if expect, err = strconv.ParseUint(v, 10, 63); err != nil || expect == 0 {
			c.fail(badf("revision %q: want the entry's current revision number", v))
			return
		}
	}
	var in EntryRequest
	if err := decodeJSON(c.r, c.limit, &in); err != nil {
		c.fail(err)
		return
	}
	e, err := s.validateEntry(in)
	if err != nil {
		c.fail(err)
		return
	}
	e.ID = c.r.PathValue("id")
	err = c.change(func(tx *sql.Tx) (audit.Event, error) {
		var err error
		e, err = s.db.UpdateEntry(c.ctx, tx, e, expect)
		if errors.Is(err, store.ErrNotFound) {
			err = fmt.Errorf("%w: no entry with id %q", store.ErrNotFound, e.ID)
		}
		return c.event(audit.KindEntryUpdate, e.ID, map[string]string{"spiffe_id": e.SPIFFEID, "parent_id": e.ParentID,
			"revision": strconv.FormatUint(e.Revision, 10)}), err
	})
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, e)
}

func (s *Server) deleteEntry(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	id := c.r.PathValue("id")
	var e wire.Entry
	err := c.change(func(tx *sql.Tx) (audit.Event, error) {
		var err error
		e, err = s.db.DeleteEntry(c.ctx, tx, id)
		if errors.Is(err, store.ErrNotFound) {
			err = fmt.Errorf("%w: no entry with id %q", store.ErrNotFound, id)
		}
		return c.event(audit.KindEntryDelete, id, map[string]string{"spiffe_id": e.SPIFFEID, "parent_id": e.ParentID}), err
	})
	if err != nil {
		c.fail(err)
		return
	}
	s.metrics.entries.Dec()
	c.reply(http.StatusOK, e)
}

func (s *Server) listJoinTokens(c *adminCall) {
	q, err := c.query("all")
	if err != nil {
		c.fail(err)
		return
	}
	all := false
	if v := q.Get("all"); v != "" {
		if all, err = strconv.ParseBool(v); err != nil {
			c.fail(badf("query parameter \"all\": want true or false"))
			return
		}
	}
	list, err := s.db.JoinTokens(c.ctx, all, s.now())
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, list)
}

// newJoinToken returns a fresh token and its public id.
func newJoinToken() (token, id string) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	var idb [8]byte
	if _, err := rand.Read(idb[:]); err != nil {
		panic(err)
	}
	return "mlj_" + base64.RawURLEncoding.EncodeToString(b[:]), hex.EncodeToString(idb[:])
}

func (s *Server) createJoinToken(c *adminCall) {
	var in JoinTokenRequest
	if err := c.decode(&in); err != nil {
		c.fail(err)
		return
	}
	id, err := s.parseSPIFFEID("spiffe_id", in.SPIFFEID)
	if err == nil {
		err = s.checkAssignable("spiffe_id", id)
	}
	if err != nil {
		c.fail(err)
		return
	}
	ttl := in.TTL.Std()
	if ttl == 0 {
		ttl = s.cfg.JoinTokenTTL.Std()
	}
	if ttl < time.Second || ttl > s.cfg.MaxJoinTokenTTL.Std() {
		c.fail(badf("ttl %s: must be between 1s and %s", ttl, s.cfg.MaxJoinTokenTTL.Std()))
		return
	}
	tok, tokID := newJoinToken()
	now := s.now().UTC()
	jt := store.JoinToken{ID: tokID, SPIFFEID: id.String(), CreatedAt: now, ExpiresAt: now.Add(ttl), Replace: in.Replace}
	err = c.change(func(tx *sql.Tx) (audit.Event, error) {
		err := s.db.InsertJoinToken(c.ctx, tx, jt, sha256.Sum256([]byte(tok)))
		details := map[string]string{"spiffe_id": jt.SPIFFEID, "expires_at": jt.ExpiresAt.Format(time.RFC3339)}
		if jt.Replace {
			details["replace"] = "true"
		}
		return c.event(audit.KindJoinTokenCreate, tokID, details), err
	})
	if err != nil {
		c.fail(err)
		return
	}
	s.metrics.tokensCreated.Inc()
	c.reply(http.StatusCreated, JoinTokenResponse{Token: tok, JoinToken: jt})
}

func (s *Server) deleteJoinToken(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	id := c.r.PathValue("id")
	var jt store.JoinToken
	err := c.change(func(tx *sql.Tx) (audit.Event, error) {
		var err error
		jt, err = s.db.DeleteJoinToken(c.ctx, tx, id)
		if errors.Is(err, store.ErrNotFound) {
			err = fmt.Errorf("%w: no join token with id %q", store.ErrNotFound, id)
		}
		return c.event(audit.KindJoinTokenDelete, id, map[string]string{"spiffe_id": jt.SPIFFEID}), err
	})
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, jt)
}

func (s *Server) listRevocations(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	l, err := s.db.Revocations(c.ctx, s.now())
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, l)
}

// normalizeSerial returns a hex serial in the server's form (lower case,
// no leading zeros, no separators).
func normalizeSerial(v string) (string, error) {
	v = strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(v), "0x"), ":", "")
	if v == "" || len(v) > 64 {
		return "", badf("serial: want 1-64 hex digits")
	}
	n, ok := new(big.Int).SetString(v, 16)
	if !ok || n.Sign() <= 0 {
		return "", badf("serial %q: not a positive hex number", v)
	}
	return n.Text(16), nil
}

func (s *Server) createRevocation(c *adminCall) {
	var in RevokeRequest
	if err := c.decode(&in); err != nil {
		c.fail(err)
		return
	}
	if (in.SPIFFEID == "") == (in.Serial == "") {
		c.fail(badf("give exactly one of spiffe_id and serial"))
		return
	}
	if len(in.Reason) > 512 {
		c.fail(badf("reason: at most 512 characters"))
		return
	}
	now := s.now().UTC()
	if in.SPIFFEID != "" {
		id, err := s.parseSPIFFEID("spiffe_id", in.SPIFFEID)
		if err != nil {
			c.fail(err)
			return
		}
		if id == s.id {
			c.fail(badf("spiffe_id: the server's own ID cannot be revoked"))
			return
		}
		if err := s.checkKnownID(c.ctx, id.String(), in.Force); err != nil {
			c.fail(err)
			return
		}
		r := store.RevokedID{SPIFFEID: id.String(), Reason: in.Reason, RevokedBy: c.actor, RevokedAt: now}
		err = c.change(func(tx *sql.Tx) (audit.Event, error) {
			_, err := s.db.RevokeID(c.ctx, tx, r)
			return c.event(audit.KindRevoke, r.SPIFFEID, map[string]string{"reason": r.Reason}), err
		})
		if err != nil {
			c.fail(err)
			return
		}
		c.reply(http.StatusCreated, r)
		return
	}
	serial, err := normalizeSerial(in.Serial)
	if err != nil {
		c.fail(err)
		return
	}
	issued, err := s.db.SVID(c.ctx, serial)
	if errors.Is(err, store.ErrNotFound) {
		err = fmt.Errorf("%w: serial %s was not issued by this server, or has expired", store.ErrNotFound, serial)
	}
	if err != nil {
		c.fail(err)
		return
	}
	if issued.Kind == store.SVIDKindServer {
		c.fail(badf("serial %s is the server's own certificate", serial))
		return
	}
	r := store.RevokedSerial{Serial: serial, SPIFFEID: issued.SPIFFEID, ExpiresAt: issued.NotAfter, Reason: in.Reason, RevokedBy: c.actor, RevokedAt: now}
	err = c.change(func(tx *sql.Tx) (audit.Event, error) {
		_, err := s.db.RevokeSerial(c.ctx, tx, r)
		return c.event(audit.KindRevoke, serial, map[string]string{"spiffe_id": r.SPIFFEID, "reason": r.Reason, "expires_at": r.ExpiresAt.Format(time.RFC3339)}), err
	})
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusCreated, r)
}

func (s *Server) deleteRevocation(c *adminCall) {
	q, err := c.query("spiffe_id")
	if err != nil {
		c.fail(err)
		return
	}
	id, err := s.parseSPIFFEID("spiffe_id", q.Get("spiffe_id"))
	if err != nil {
		c.fail(err)
		return
	}
	err = c.change(func(tx *sql.Tx) (audit.Event, error) {
		_, err := s.db.UnrevokeID(c.ctx, tx, id.String())
		if errors.Is(err, store.ErrNotFound) {
			err = fmt.Errorf("%w: %s is not revoked", store.ErrNotFound, id)
		}
		return c.event(audit.KindUnrevoke, id.String(), nil), err
	})
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusNoContent, nil)
}

// caStatusNow is CAStatus from one snapshot of the CA (ca.View): the
// sequence number, the authorities and the PEM bundle describe one state.
func (s *Server) caStatusNow() CAStatus {
	bundle, status := s.ca.View()
	seq, _ := bundle.SequenceNumber()
	var b strings.Builder
	for _, c := range bundle.X509Authorities() {
		b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return CAStatus{TrustDomain: s.td.Name(), BundleSequence: seq, Authorities: status, BundlePEM: b.String()}
}

func (s *Server) caStatus(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, s.caStatusNow())
}

func (s *Server) caRotate(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	if err := s.ca.Rotate(c.ctx); err != nil {
		c.fail(err)
		return
	}
	if err := s.publishBundle(c.ctx, c.event(audit.KindCARotate, s.td.Name(), nil)); err != nil {
		c.publishFailed("rotation", err)
		return
	}
	c.audited = true
	c.reply(http.StatusOK, s.caStatusNow())
}

func (s *Server) issueAdminCert(c *adminCall) {
	var in AdminCertRequest
	if err := c.decode(&in); err != nil {
		c.fail(err)
		return
	}
	id, err := s.parseSPIFFEID("spiffe_id", in.SPIFFEID)
	if err != nil {
		c.fail(err)
		return
	}
	if !s.admins[id.String()] {
		c.fail(badf("spiffe_id %q: not one of this server's admin IDs (%s); add it to admin_ids in the server config", id, strings.Join(s.cfg.AdminIDs, ", ")))
		return
	}
	if len(in.CSR) == 0 {
		c.fail(badf("csr: required (PKCS#10, DER, base64 in JSON)"))
		return
	}
	ttl := in.TTL.Std()
	if ttl == 0 {
		ttl = 24 * time.Hour
	}
	if ttl < time.Minute || ttl > s.cfg.MaxX509SVIDTTL.Std() {
		c.fail(badf("ttl %s: must be between 1m and %s", ttl, s.cfg.MaxX509SVIDTTL.Std()))
		return
	}
	iss, err := s.ca.SignX509SVID(in.CSR, id, ttl)
	if err != nil {
		c.fail(badf("csr: %v", err))
		return
	}
	rec := store.IssuedSVID{Serial: iss.Serial, SPIFFEID: id.String(), Kind: store.SVIDKindAdmin, IssuedTo: c.actor, NotAfter: iss.NotAfter, IssuedAt: s.now()}
	err = c.change(func(tx *sql.Tx) (audit.Event, error) {
		err := s.db.InsertSVIDs(c.ctx, tx, rec)
		return c.event(audit.KindAdminCert, id.String(), map[string]string{"serial": iss.Serial, "not_after": iss.NotAfter.Format(time.RFC3339)}), err
	})
	if err != nil {
		c.fail(err)
		return
	}
	s.metrics.svids.WithLabelValues(store.SVIDKindAdmin).Inc()
	c.reply(http.StatusCreated, AdminCertResponse{SVID: toWireSVID(iss, id.String(), ""), BundlePEM: s.caStatusNow().BundlePEM})
}

func (s *Server) getBundle(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, s.wireBundle())
}

func (s *Server) listAudit(c *adminCall) {
	before, limit, err := c.pageQuery(100, "a sequence number")
	if err != nil {
		c.fail(err)
		return
	}
	recs, err := audit.List(c.ctx, s.db, before, limit)
	if err != nil {
		c.fail(err)
		return
	}
	page := AuditPage{Records: make([]AuditRecord, 0, len(recs))}
	for _, r := range recs {
		page.Records = append(page.Records, AuditRecord{Seq: r.Seq, Time: r.Time, Kind: r.Kind, Actor: r.Actor, Subject: r.Subject,
			Outcome: r.Outcome, Details: r.Details, Hash: hex.EncodeToString(r.Hash), PrevHash: hex.EncodeToString(r.PrevHash)})
	}
	if len(recs) == limit && recs[len(recs)-1].Seq > 1 {
		page.Next = recs[len(recs)-1].Seq
	}
	c.reply(http.StatusOK, page)
}

func (s *Server) listNodes(c *adminCall) {
	if _, err := c.query(); err != nil {
		c.fail(err)
		return
	}
	out, err := s.nodeStatuses(c.ctx)
	if err != nil {
		c.fail(err)
		return
	}
	c.reply(http.StatusOK, out)
}

// nodeStatuses lists every attested node with its convergence, for the
// admin API and the dashboard.
func (s *Server) nodeStatuses(ctx context.Context) ([]NodeStatus, error) {
	nodes, err := s.db.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	vs, err := s.db.Versions(ctx)
	if err != nil {
		return nil, err
	}
	base := max(vs.Sections[store.SectionBundle], vs.Sections[store.SectionRevocations], vs.Sections[store.SectionPolicies])
	now := s.now()
	out := make([]NodeStatus, 0, len(nodes))
	for _, n := range nodes {
		pv, err := s.db.ParentVersion(ctx, n.SPIFFEID)
		if err != nil {
			return nil, err
		}
		req := max(base, pv)
		rev := s.nodeRevocation(n)
		out = append(out, NodeStatus{Node: n, Connected: s.nodeConnected(n, rev.Revoked, now),
			RequiredVersion: req, InSync: n.AckedVersion >= req, Revocation: rev})
	}
	return out, nil
}
