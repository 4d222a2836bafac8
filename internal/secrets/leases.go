package secrets

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/secrets/acl"
	"github.com/moatless/moatless/internal/store"
)

// maxRevokeBackoff caps the retry delay of a failing revocation.
const maxRevokeBackoff = 10 * time.Minute

// leasesAPI serves sys/leases/{lookup,renew,revoke,revoke-prefix/P} and
// LIST sys/leases/lookup/PREFIX (plus Vault's older sys/renew,
// sys/revoke). A token may look up, renew and revoke the leases it
// obtained without a policy; other leases need the capability on the
// endpoint (revoke-prefix and listing always need sudo).
func (s *Service) leasesAPI(rq *req, rest string) (*envelope, error) {
	switch {
	case strings.HasPrefix(rest, "revoke-prefix/"):
		if err := rq.need(acl.Update | acl.Sudo); err != nil {
			return nil, err
		}
		if err := rq.body.done(); err != nil {
			return nil, err
		}
		prefix := strings.TrimPrefix(rest, "revoke-prefix/")
		return nil, s.revokePrefix(rq, prefix)
	case strings.HasPrefix(rest, "lookup/") || (rest == "lookup" && rq.op == "list"):
		if err := rq.need(acl.List | acl.Sudo); err != nil {
			return nil, err
		}
		prefix := strings.TrimPrefix(strings.TrimPrefix(rest, "lookup"), "/")
		if prefix != "" {
			prefix += "/"
		}
		ls, err := s.db.Leases(rq.ctx, prefix, "", 10000)
		if err != nil {
			return nil, err
		}
		keys := []string{}
		seen := map[string]bool{}
		for _, l := range ls {
			k := strings.TrimPrefix(l.ID, prefix)
			if i := strings.IndexByte(k, '/'); i >= 0 {
				k = k[:i+1]
			}
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
		return listing(keys)
	}
	id := rq.body.str("lease_id")
	inc := rq.body.duration("increment")
	rq.body.raw("sync")
	if err := rq.body.done(); err != nil {
		return nil, err
	}
	if id == "" {
		return nil, badRequest("lease_id: required")
	}
	rq.details["lease_id"] = id
	l, err := s.db.LeaseByID(rq.ctx, s.db.SQL(), id, false)
	if errors.Is(err, store.ErrNotFound) {
		return nil, badRequest("invalid lease")
	}
	if err != nil {
		return nil, err
	}
	own := l.TokenAccessor != "" && (l.TokenAccessor == rq.tok.accessor || (rq.tok.accessor == "" && l.TokenAccessor == rq.tok.actor()))
	if !own {
		if err := rq.needOp(); err != nil {
			return nil, err
		}
	}
	switch rest {
	case "lookup":
		return data(leaseInfo(l, s.now())), nil
	case "renew":
		return s.renewLease(rq, l, inc)
	case "revoke":
		return nil, s.revokeLeaseNow(rq, l)
	}
	return nil, errf(http.StatusNotFound, "no handler for route %q", rq.path)
}

func leaseInfo(l store.Lease, now time.Time) map[string]any {
	ttl := int64(l.ExpiresAt.Sub(now) / time.Second)
	if ttl < 0 {
		ttl = 0
	}
	d := map[string]any{"id": l.ID, "issue_time": timeStr(l.IssuedAt), "expire_time": timeStr(l.ExpiresAt),
		"last_renewal": nil, "renewable": l.Renewable && l.RevokeRequestedAt.IsZero(), "ttl": ttl}
	if l.Attempts > 0 {
		d["revocation_attempts"] = l.Attempts
		d["revocation_error"] = l.LastError
	}
	return d
}

func (s *Service) renewLease(rq *req, l store.Lease, inc time.Duration) (*envelope, error) {
	now := s.now()
	if !l.RevokeRequestedAt.IsZero() || !now.Before(l.ExpiresAt) {
		return nil, badRequest("lease expired or revoked")
	}
	plain, err := s.barrier.Open("lease/"+l.ID, l.Sealed)
	if err != nil {
		return nil, err
	}
	var dl dbLease
	if err := json.Unmarshal(plain, &dl); err != nil {
		return nil, err
	}
	if inc <= 0 {
		inc = s.cfg.DefaultLeaseTTL
		var role dbRole
		if s.getObject(rq, kindDBRole, dl.Role, &role) == nil && role.DefaultTTL > 0 {
			inc = role.DefaultTTL
		}
	}
	exp := now.Add(inc)
	var warnings []string
	if exp.After(l.MaxExpires) {
		exp = l.MaxExpires
		warnings = append(warnings, "TTL of the lease is capped by its max_ttl")
	}
	if st := rq.tok.stored; st != nil && l.TokenAccessor == st.Accessor && exp.After(st.ExpiresAt) {
		exp = st.ExpiresAt
		warnings = append(warnings, "TTL of the lease is capped by its token's")
	}
	renew := dl.Renew
	if len(renew) == 0 {
		renew = defaultRenew
	}
	conn, err := s.loadConnection(rq.ctx, s.db.SQL(), dl.DB, false)
	if err != nil {
		return nil, err
	}
	db, err := s.dbs.get(dl.DB, conn)
	if err != nil {
		return nil, err
	}
	var sts []string
	for _, st := range renew {
		sts = append(sts, render(st, dl.Username, "", exp))
	}
	if err := execAll(rq.ctx, db, sts); err != nil {
		return nil, errf(http.StatusInternalServerError, "renewing the database user failed: %s", redact(err.Error(), conn))
	}
	if err := rq.tx(func(tx *sql.Tx) error { return s.db.RenewLease(rq.ctx, tx, l.ID, exp) }); err != nil {
		return nil, err
	}
	return &envelope{LeaseID: l.ID, Renewable: true, LeaseDuration: int64(exp.Sub(now) / time.Second), Warnings: warnings}, nil
}

// revokeLeaseNow marks the lease for revocation and tries at once; a
// failure is answered (and retried in the background with backoff).
func (s *Service) revokeLeaseNow(rq *req, l store.Lease) error {
	if err := rq.tx(func(tx *sql.Tx) error { return s.db.MarkLeaseRevoking(rq.ctx, tx, l.ID, s.now()) }); err != nil {
		return err
	}
	if err := s.revokeLease(rq.ctx, l); err != nil {
		return errf(http.StatusInternalServerError, "revocation failed and will be retried: %v", err)
	}
	return nil
}

func (s *Service) revokePrefix(rq *req, prefix string) error {
	if prefix == "" {
		return badRequest("a prefix is required")
	}
	ls, err := s.db.Leases(rq.ctx, prefix, "", 100000)
	if err != nil {
		return err
	}
	now := s.now()
	rq.details["prefix"] = prefix
	rq.details["leases"] = strconv.Itoa(len(ls))
	if err := rq.tx(func(tx *sql.Tx) error {
		for _, l := range ls {
			if err := s.db.MarkLeaseRevoking(rq.ctx, tx, l.ID, now); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	failed := 0
	for _, l := range ls {
		if s.revokeLease(rq.ctx, l) != nil {
			failed++
		}
	}
	if failed > 0 {
		return errf(http.StatusInternalServerError, "%d of %d revocations failed and will be retried", failed, len(ls))
	}
	return nil
}

// revokeLease revokes one lease: drops the database user and deletes the
// lease with an audit record. On failure it records the attempt and the
// next retry (backoff doubling from RevokeBackoff, capped at 10 minutes).
func (s *Service) revokeLease(ctx context.Context, l store.Lease) error {
	ctx = context.WithoutCancel(ctx)
	now := s.now()
	plain, err := s.barrier.Open("lease/"+l.ID, l.Sealed)
	var dl dbLease
	if err == nil {
		err = json.Unmarshal(plain, &dl)
	}
	if err == nil {
		err = s.revokeDBUser(ctx, dl, now)
	}
	if err != nil {
		s.metrics.leaseRevokes.WithLabelValues("failure").Inc()
		attempts := l.Attempts + 1
		back := s.cfg.RevokeBackoff << min(attempts-1, 20)
		if back > maxRevokeBackoff || back <= 0 {
			back = maxRevokeBackoff
		}
		msg := err.Error()
		if len(msg) > 500 {
			msg = msg[:500]
		}
		s.log.Warn("lease revocation failed; will retry", "lease_id", l.ID, "attempt", attempts, "retry_in", back, "err", msg)
		if rerr := s.db.LeaseRevokeFailed(ctx, l.ID, attempts, now.Add(back), msg); rerr != nil {
			s.log.Error("record lease revocation failure", "err", rerr)
		}
		return err
	}
	err = s.db.Tx(ctx, func(tx *sql.Tx) error {
		if err := s.db.DeleteLease(ctx, tx, l.ID); err != nil {
			return err
		}
		why := "expired"
		if !l.RevokeRequestedAt.IsZero() {
			why = "revoked"
		}
		return s.cfg.Audit.AppendTx(ctx, tx, audit.Event{Kind: "secrets.lease.revoke", Actor: "moatless-secrets", Subject: l.ID, Outcome: audit.Success,
			Details: map[string]string{"reason": why, "username": dl.Username, "attempts": strconv.FormatInt(l.Attempts+1, 10)}})
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil // revoked (and audited) by another replica meanwhile
	}
	if err != nil {
		return err
	}
	s.metrics.leaseRevokes.WithLabelValues("success").Inc()
	return nil
}

// RevokeLeasesOfRevokedIDs revokes now, rather than at the next Tick, the
// leases of SPIFFE IDs revoked since (Config.Revoked): the server calls it
// as soon as it has read a new revocation, so a compromised workload's
// database users are dropped in the same moment its connections are cut.
func (s *Service) RevokeLeasesOfRevokedIDs(ctx context.Context) {
	if s.Sealed() {
		return
	}
	s.revokeLeasesOfRevokedIDs(ctx)
	s.revokeDueLeases(ctx)
}

// revokeLeasesOfRevokedIDs asks for the revocation of every lease held by
// a SPIFFE ID that has been revoked since: a compromised workload's
// database users go with it, not when their leases run out.
func (s *Service) revokeLeasesOfRevokedIDs(ctx context.Context) {
	ids, err := s.db.LeaseSPIFFEIDs(ctx)
	if err != nil {
		s.log.Warn("read lease identities", "err", err)
		return
	}
	for _, id := range ids {
		if !s.cfg.Revoked(id) {
			continue
		}
		err := s.markLeasesAudited(ctx, "secrets.lease.revoke_identity", id, "SPIFFE ID revoked", func(tx *sql.Tx) (int64, error) {
			return s.db.MarkLeasesOfSPIFFEID(ctx, tx, id, s.now())
		})
		if err != nil {
			s.log.Warn("revoke leases of a revoked SPIFFE ID", "spiffe_id", id, "err", err)
		}
	}
}

// markLeasesAudited marks leases for revocation (mark returns how many)
// and, when any were, appends the audit record kind saying why, in one
// transaction: the maintenance pass revokes what is marked.
func (s *Service) markLeasesAudited(ctx context.Context, kind, subject, reason string, mark func(*sql.Tx) (int64, error)) error {
	return s.db.Tx(ctx, func(tx *sql.Tx) error {
		n, err := mark(tx)
		if err != nil || n == 0 {
			return err
		}
		return s.cfg.Audit.AppendTx(ctx, tx, audit.Event{Kind: kind, Actor: "moatless-secrets", Subject: subject,
			Outcome: audit.Success, Details: map[string]string{"reason": reason, "leases": strconv.FormatInt(n, 10)}})
	})
}

// revokeDueLeases revokes every lease that expired or whose revocation
// was asked for and is due for an attempt — also those that expired while
// the server was down, on the first tick after start.
func (s *Service) revokeDueLeases(ctx context.Context) {
	ls, err := s.db.DueLeases(ctx, s.now(), 200)
	if err != nil {
		s.log.Warn("read due leases", "err", err)
		return
	}
	for _, l := range ls {
		s.revokeLease(ctx, l)
	}
}
