package server

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/ca"
	"github.com/moatless/moatless/internal/store"
)

// Audit kinds of the operator's CA steps (docs/ca.md "Compromised key").
const (
	KindCAPrepare  = "ca.prepare"
	KindCAActivate = "ca.activate"
	KindCATaint    = "ca.taint"
	KindCARevoke   = "ca.revoke"
)

// RevokedAuthoritiesFile, in the data directory, lists the IDs of the CA
// authorities this server has seen revoked, one per line. The server
// refuses to start on a store whose CA state holds one of them again (a
// store restored from before the revocation).
const RevokedAuthoritiesFile = "ca-revoked"

// TaintedAuthoritiesFile, in the data directory, lists the IDs of the CA
// authorities this server has seen tainted, one per line (revoked ones
// too: the file only grows, as ca-revoked does). A store restored
// from before a taint holds such an authority untainted: the server taints
// it again at start when it is retired, and refuses to start when it is
// active or prepared (reapplyTaints).
const TaintedAuthoritiesFile = "ca-tainted"

// BundleSequenceFile is the name, in the data directory, of the highest
// bundle sequence number this server has published (decimal). A store
// restored from an older backup holds a lower one, which agents refuse:
// the server raises it past this one at start (raiseRestoredSequence).
const BundleSequenceFile = "ca-sequence"

// readBundleSequence reads DIR/ca-sequence: 0 when there is none.
func readBundleSequence(dir string) (uint64, error) {
	path := filepath.Join(dir, BundleSequenceFile)
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("server: read %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() > 32 {
		return 0, fmt.Errorf("server: %s is not a regular file of at most 32 bytes (mode %s, %d bytes): the server writes it; remove it to start anyway", path, fi.Mode(), fi.Size())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("server: read %s: %w", path, err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("server: %s: %w", filepath.Join(dir, BundleSequenceFile), err)
	}
	return n, nil
}

// writeBundleSequence records seq as the highest bundle sequence
// published, unless a higher one is recorded already.
func (s *Server) writeBundleSequence(seq uint64) error {
	s.dataFilesMu.Lock()
	defer s.dataFilesMu.Unlock()
	old, err := readBundleSequence(s.cfg.DataDir)
	if err != nil || old >= seq {
		return err
	}
	if err := writeFileAtomic(filepath.Join(s.cfg.DataDir, BundleSequenceFile), []byte(strconv.FormatUint(seq, 10)+"\n"), 0o644, false); err != nil {
		return fmt.Errorf("server: write %s: %w", BundleSequenceFile, err)
	}
	return nil
}

// raiseRestoredSequence raises the stored CA state's bundle sequence past
// the highest this data directory published, when the store holds a lower
// one: a store restored from a backup. Without it every agent, which
// refuses a bundle older than the one it holds, would keep the bundle from
// before the restore until the sequence passed it again.
func (s *Server) raiseRestoredSequence(ctx context.Context) error {
	high, err := readBundleSequence(s.cfg.DataDir)
	if err != nil {
		return err
	}
	seq, _ := s.ca.Bundle().SequenceNumber()
	if seq >= high {
		return nil
	}
	s.log.Warn("ca: the stored CA state's bundle sequence is lower than this server published (a store restored from a backup?); raising it so the agents take the restored bundle",
		"stored_sequence", seq, "published_sequence", high)
	if _, err := s.ca.RaiseSequence(ctx, high); err != nil {
		return fmt.Errorf("server: raise the restored bundle sequence past %d: %w", high, err)
	}
	return nil
}

// parseAuthorityKind reads the kind of a CA step: "x509", "jwt", or (when
// optional) "" for "find it by ID".
func parseAuthorityKind(v string, optional bool) (ca.AuthorityKind, error) {
	switch k := ca.AuthorityKind(v); {
	case k == ca.KindX509 || k == ca.KindJWT:
		return k, nil
	case v == "" && optional:
		return "", nil
	case v == "":
		return "", badf("kind: required, %q or %q", ca.KindX509, ca.KindJWT)
	default:
		return "", badf("kind: %q is not %q or %q", v, ca.KindX509, ca.KindJWT)
	}
}

// parseAuthorityID checks the form of an authority ID (ca.IDKind) and,
// when kind is given, that it is an ID of that kind.
func parseAuthorityID(id string, kind ca.AuthorityKind, required bool) error {
	if id == "" {
		if required {
			return badf("id: required (the authority's ID, as `moatless ca show` lists it)")
		}
		return nil
	}
	k, err := ca.IDKind(id)
	switch {
	case err != nil:
		return badf("id: %s", strings.TrimPrefix(err.Error(), ca.ErrInvalidRequest.Error()+": "))
	case kind != "" && k != kind:
		return badf("id: %s is a %s authority ID, but kind is %s", id, k, kind)
	}
	return nil
}

// caStep is POST /v1/admin/ca/{prepare,activate,taint,revoke}.
func (s *Server) caStep(step string) func(c *adminCall) {
	return func(c *adminCall) {
		var in CAStepRequest
		if err := c.decode(&in); err != nil {
			c.fail(err)
			return
		}
		kind, err := parseAuthorityKind(in.Kind, step == "taint" || step == "revoke")
		if err == nil {
			err = parseAuthorityID(in.ID, kind, step == "taint" || step == "revoke")
		}
		if err == nil && step == "prepare" && in.ID != "" {
			err = badf("id: prepare makes a new authority; it takes no id")
		}
		if err != nil {
			c.fail(err)
			return
		}
		var (
			a       ca.Authority
			changed bool
			evKind  string
		)
		switch step {
		case "prepare":
			a, changed, err = s.ca.Prepare(c.ctx, kind)
			evKind = KindCAPrepare
		case "activate":
			a, changed, err = s.ca.Activate(c.ctx, kind, in.ID)
			evKind = KindCAActivate
		case "taint":
			a, changed, err = s.ca.Taint(c.ctx, kind, in.ID)
			evKind = KindCATaint
		case "revoke":
			// Normally done at the taint; a failed renewal then is tried
			// again before the key stops being trusted.
			s.renewServerCertIfTainted(c.ctx)
			a, changed, err = s.ca.Revoke(c.ctx, kind, in.ID)
			evKind = KindCARevoke
		}
		if err != nil {
			if changed {
				// The CA adopted another replica's step before refusing
				// its own: that bundle must still go out.
				s.publishAdopted(c.ctx)
			}
			c.fail(err)
			return
		}
		// Every step is recorded with the bundle version, also an
		// activation (which leaves the bundle as it was): agents then get
		// the same bundle again, harmlessly.
		ev := c.event(evKind, a.ID, map[string]string{"kind": string(a.Kind), "state": string(a.State), "not_after": a.NotAfter.UTC().Format("2006-01-02T15:04:05Z")})
		if err := s.publishBundle(c.ctx, ev); err != nil {
			c.publishFailed(step, err)
			return
		}
		c.audited = true
		s.renewServerCertIfTainted(c.ctx)
		c.reply(http.StatusOK, CAStepResponse{Authority: a, CAStatus: s.caStatusNow()})
	}
}

// publishFailed answers a CA step that the CA saved (it is in force, and
// taking it again is refused) but whose publication failed: its audit
// record is pending with the publication, which the maintenance loop
// retries, so the call is not audited again here.
func (c *adminCall) publishFailed(step string, err error) {
	c.s.log.Error("CA step saved, but publishing the trust bundle failed; the server retries it", "step", step, "err", err)
	c.audited = true
	c.reply(http.StatusInternalServerError, errorBody("the CA "+step+" was saved and is in force, but publishing the new trust bundle failed (see the server log); the server retries the publication: do not take the step again, check `moatless ca show` and `moatless agent list`"))
}

// publishAdopted pushes a bundle the CA adopted from another replica.
func (s *Server) publishAdopted(ctx context.Context) {
	ev := audit.Event{Kind: audit.KindBundleChange, Actor: s.id.String(), Subject: s.td.Name(), Outcome: audit.Success}
	if err := s.publishBundle(ctx, ev); err != nil {
		s.log.Error("publish trust bundle", "err", err)
	}
}

// serverCertIssuerTainted reports whether the server's own TLS certificate
// was signed by an authority that is tainted or revoked since.
func (s *Server) serverCertIssuerTainted() bool {
	c := s.cert.Load()
	if c == nil || c.tls.Leaf == nil {
		return false
	}
	_, st, ok := s.ca.IssuerState(c.tls.Leaf)
	return ok && (st == ca.StateTainted || st == ca.StateRevoked)
}

// renewServerCertIfTainted re-issues the server's own TLS certificate when
// its signer was tainted or revoked: agents that drop the tainted
// authority would refuse the server otherwise.
func (s *Server) renewServerCertIfTainted(ctx context.Context) {
	if !s.serverCertIssuerTainted() {
		return
	}
	s.log.Warn("the server certificate was signed by a tainted CA authority; re-issuing it")
	if err := s.renewServerCert(ctx); err != nil {
		s.log.Error("re-issue the server certificate after a taint; keeping the old one", "err", err)
	}
}

// readRevokedAuthorities reads DIR/ca-revoked (readAuthorityIDs).
func readRevokedAuthorities(dir string) ([]string, error) {
	return readAuthorityIDs(dir, RevokedAuthoritiesFile)
}

// readAuthorityIDs reads DIR/name, ca-revoked or ca-tainted: one authority
// ID a line. A missing file is an empty list; anything else that is not an
// authority ID stops the server (the file is the server's own), and so
// does anything that is not a regular file of at most maxRevokedFileSize
// (a FIFO or a device put in its place would block or exhaust the start).
func readAuthorityIDs(dir, name string) ([]string, error) {
	path := filepath.Join(dir, name)
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("server: read %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxRevokedFileSize {
		return nil, fmt.Errorf("server: %s is not a regular file of at most %d bytes (mode %s, %d bytes): the server writes it; restore it from a backup of the data directory", path, maxRevokedFileSize, fi.Mode(), fi.Size())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("server: read %s: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxRevokedFileSize+1))
	if err == nil && len(b) > maxRevokedFileSize {
		err = fmt.Errorf("over %d bytes", maxRevokedFileSize)
	}
	if err != nil {
		return nil, fmt.Errorf("server: read %s: %w", path, err)
	}
	ids, err := parseRevokedAuthorities(b)
	if err != nil {
		return nil, fmt.Errorf("server: %s: %w", path, err)
	}
	return ids, nil
}

// maxRevokedAuthorities bounds DIR/ca-revoked, and maxRevokedFileSize
// its size: that many of the longest IDs (43 characters) and newlines.
const (
	maxRevokedAuthorities = 100_000
	maxRevokedFileSize    = maxRevokedAuthorities * 44
)

func parseRevokedAuthorities(b []byte) ([]string, error) {
	var ids []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		id := sc.Text()
		if _, err := ca.IDKind(id); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if len(ids) == maxRevokedAuthorities {
			return nil, fmt.Errorf("more than %d IDs", maxRevokedAuthorities)
		}
		ids = append(ids, id)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return ids, nil
}

// writeRevokedAuthorities adds the IDs the CA has seen revoked to
// DIR/ca-revoked (it only grows: an ID revoked once is never trusted
// again by this server).
//
// Publication and changed() both call it: the read, merge and write is
// one step under dataFilesMu, or a writer that read the file before
// another's write would put it back without the other's newest ID.
func (s *Server) writeRevokedAuthorities() error {
	return s.addAuthorityIDs(RevokedAuthoritiesFile, s.ca.RevokedIDs())
}

// writeTaintedAuthorities adds the IDs of the authorities tainted in
// status to DIR/ca-tainted. Like ca-revoked it only grows (bounded as
// ca-revoked is): a revocation does not rewrite it, so the revoke step
// publishes with no more file writes than before.
func (s *Server) writeTaintedAuthorities(status []ca.Authority) error {
	var ids []string
	for _, a := range status {
		if a.State == ca.StateTainted {
			ids = append(ids, a.ID)
		}
	}
	return s.addAuthorityIDs(TaintedAuthoritiesFile, ids)
}

// addAuthorityIDs merges ids into DIR/name (ca-revoked, ca-tainted),
// which only grows, and writes it atomically when anything is new. The
// read, merge and write is one step under dataFilesMu; callers do not
// hold it.
func (s *Server) addAuthorityIDs(name string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	s.dataFilesMu.Lock()
	defer s.dataFilesMu.Unlock()
	old, err := readAuthorityIDs(s.cfg.DataDir, name)
	if err != nil {
		return err
	}
	all := append(slices.Clone(old), ids...)
	slices.Sort(all)
	all = slices.Compact(all)
	if slices.Equal(all, old) {
		return nil
	}
	out := strings.Join(all, "\n") + "\n"
	if err := writeFileAtomic(filepath.Join(s.cfg.DataDir, name), []byte(out), 0o644, false); err != nil {
		return fmt.Errorf("server: write %s: %w", name, err)
	}
	return nil
}

// reapplyTaints taints again, at start, every authority DIR/ca-tainted
// records tainted that the opened CA state holds untainted: a store
// restored from a backup taken before the taint. Without it the restored
// state would silently un-taint a key the operator declared compromised:
// holders of SVIDs it signed would keep them, and agents would trust it
// as a plain retired authority again. A retired one is tainted again (an
// audited ca.taint by the server, with the reason); an active or prepared
// one cannot be (it signs, or would), so the start is refused with what
// to do.
func (s *Server) reapplyTaints(ctx context.Context, tainted []string) error {
	if len(tainted) == 0 {
		return nil
	}
	path := filepath.Join(s.cfg.DataDir, TaintedAuthoritiesFile)
	var evs []audit.Event
	for _, a := range s.ca.Status() {
		if !slices.Contains(tainted, a.ID) {
			continue
		}
		switch a.State {
		case ca.StateTainted, ca.StateRevoked:
			continue
		case ca.StateRetired:
		default:
			return fmt.Errorf("server: the store holds %s authority %s %s, but %s records it tainted: the store was restored from before the taint. "+
				"Restore a backup taken after the taint, or, to start with this store anyway, remove the authority's line from %s, start, and at once prepare, activate and taint again (docs/ca.md, \"Compromised key\")",
				a.Kind, a.ID, a.State, path, path)
		}
		t, _, err := s.ca.Taint(ctx, a.Kind, a.ID)
		if err != nil {
			return fmt.Errorf("server: taint %s authority %s again, as %s records: %w", a.Kind, a.ID, path, err)
		}
		s.log.Warn("ca: the store holds an authority this data directory recorded tainted (a store restored from before the taint); tainted it again",
			"kind", a.Kind, "id", a.ID, "file", path)
		evs = append(evs, audit.Event{Kind: KindCATaint, Actor: s.id.String(), Subject: a.ID, Outcome: audit.Success,
			Details: map[string]string{"kind": string(t.Kind), "state": string(t.State), "reason": "the store was restored from before the taint; re-applied from " + TaintedAuthoritiesFile}})
	}
	if len(evs) == 0 {
		return nil
	}
	seq, _ := s.ca.Bundle().SequenceNumber()
	for i := range evs {
		evs[i].Details["bundle_sequence"] = strconv.FormatUint(seq, 10)
	}
	// The taint is saved; the bundle version tells the other replicas to
	// adopt it, in the transaction of its audit record. When this fails
	// the start stops; the next start finds the authority tainted in the
	// store (the streams of this server send it), and the other replicas
	// adopt it at the next bundle change.
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		if _, err := s.db.BumpVersion(ctx, tx, store.SectionBundle); err != nil {
			return err
		}
		return s.audit.AppendTx(ctx, tx, evs...)
	})
	if err != nil {
		return fmt.Errorf("server: record the re-applied taint: %w", err)
	}
	return nil
}
