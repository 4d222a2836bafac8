package ca

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The operator's steps on one authority, for a compromised key (SPIRE's
// `spire-server localauthority x509|jwt prepare|activate|taint|revoke`):
//
//  1. Prepare a successor (it is published in the bundle at once);
//  2. Activate it now, without waiting for ActivationDelay: the active
//     authority (the compromised one) retires;
//  3. Taint the retired authority: the bundle marks it, and every holder of
//     an SVID it signed replaces that SVID at once;
//  4. Revoke it: it leaves the bundle and is never trusted again.
//
// Each step takes effect only once its state is saved; on a store that
// supports compare-and-swap a step that loses a race to another replica is
// checked again against the winner's state (so two replicas tainting the
// same authority at once give one taint and one ErrAuthorityState).

// Prepare prepares a new authority of kind, published in the bundle now
// and activated by Tick after ActivationDelay (or at once by Activate).
// ErrAuthorityState if one is already prepared, ErrTooManyAuthorities when
// the bundle is full, ErrInvalidRequest for an unknown kind. changed
// reports whether the bundle changed (always, on success).
func (c *CA) Prepare(ctx context.Context, kind AuthorityKind) (a Authority, changed bool, err error) {
	if err := checkKind(kind); err != nil {
		return Authority{}, false, err
	}
	return c.operate(ctx, func(st *state, now time.Time) (*state, string, error) {
		list := st.list(kind)
		if p := find(list, StatePrepared); p >= 0 {
			return nil, "", fmt.Errorf("%w: %s authority %s is already prepared (activates at %s): activate it with `moatless ca activate --kind %s`, or wait", ErrAuthorityState, kind, list[p].ID, list[p].ActivateAt.UTC().Format(time.RFC3339), kind)
		}
		if len(list) >= maxAuthorities {
			return nil, "", fmt.Errorf("%w: %d %s authorities; retired ones are dropped at their NotAfter", ErrTooManyAuthorities, len(list), kind)
		}
		r, err := c.newAuthority(kind, now, now.Add(c.o.ActivationDelay))
		if err != nil {
			return nil, "", err
		}
		c.o.Logger.Info("ca: prepared authority (operator)", "kind", kind, "id", r.ID, "activate_at", r.ActivateAt, "not_after", r.NotAfter)
		return st.with(kind, append(slices.Clone(list), r)), r.ID, nil
	})
}

// Activate activates the prepared authority of kind now, without waiting
// for ActivationDelay; the active one retires. id, when not empty, must be
// the prepared authority's ID. Peers that have not yet received the bundle
// with the new authority refuse what it signs until they do.
// ErrAuthorityState when nothing is prepared (or id names an authority in
// another state), ErrUnknownAuthority for an unknown id.
func (c *CA) Activate(ctx context.Context, kind AuthorityKind, id string) (a Authority, changed bool, err error) {
	if err := checkKind(kind); err != nil {
		return Authority{}, false, err
	}
	return c.operate(ctx, func(st *state, now time.Time) (*state, string, error) {
		list := slices.Clone(st.list(kind))
		p := find(list, StatePrepared)
		if id != "" {
			i := slices.IndexFunc(list, func(r record) bool { return r.ID == id })
			switch {
			case i < 0:
				return nil, "", unknownAuthority(st, kind, id)
			case i != p:
				return nil, "", fmt.Errorf("%w: %s authority %s is %s; only a prepared authority can be activated", ErrAuthorityState, kind, id, list[i].State)
			}
		}
		if p < 0 {
			return nil, "", fmt.Errorf("%w: no %s authority is prepared: run `moatless ca prepare --kind %s` first", ErrAuthorityState, kind, kind)
		}
		if a := find(list, StateActive); a >= 0 {
			list[a].State = StateRetired
			list[a].RetiredAt = now
			c.o.Logger.Info("ca: retired authority", "kind", kind, "id", list[a].ID, "drop_at", list[a].NotAfter)
		}
		list[p].State = StateActive
		list[p].ActivatedAt = now
		list[p].ActivateAt = time.Time{}
		c.o.Logger.Warn("ca: activated authority at once (operator), before its publication delay: peers accept its SVIDs once they have the new bundle", "kind", kind, "id", list[p].ID, "prepared_at", list[p].PreparedAt)
		return st.with(kind, list), list[p].ID, nil
	})
}

// Taint marks a retired authority compromised: it stays in the bundle,
// marked (wire.Bundle.TaintedX509Authorities, wire.JWTAuthority.Tainted),
// so that whoever holds an SVID it signed replaces it at once. kind ""
// finds the authority by ID alone. The active and the prepared authority
// cannot be tainted (ErrAuthorityState): activate a successor first. An
// X.509 authority signed by an upstream CA cannot be tainted here (the
// bundle holds the upstream roots, not it): revoke it at the upstream CA.
func (c *CA) Taint(ctx context.Context, kind AuthorityKind, id string) (a Authority, changed bool, err error) {
	return c.operate(ctx, func(st *state, now time.Time) (*state, string, error) {
		k, i, err := st.lookup(kind, id)
		if err != nil {
			return nil, "", err
		}
		list := slices.Clone(st.list(k))
		r := &list[i]
		switch r.State {
		case StateActive:
			return nil, "", fmt.Errorf("%w: %s authority %s is active and signs; prepare and activate a successor first (`moatless ca prepare --kind %s`, then `moatless ca activate --kind %s`), then taint it", ErrAuthorityState, k, id, k, k)
		case StatePrepared:
			return nil, "", fmt.Errorf("%w: %s authority %s is prepared and has signed nothing; only a retired authority can be tainted", ErrAuthorityState, k, id)
		case StateTainted:
			return nil, "", fmt.Errorf("%w: %s authority %s is already tainted (since %s); revoke it with `moatless ca revoke %s`", ErrAuthorityState, k, id, r.TaintedAt.UTC().Format(time.RFC3339), id)
		}
		if r.Parent != "" {
			return nil, "", fmt.Errorf("%w: X.509 authority %s is signed by the upstream CA, whose roots are the bundle's anchors: it cannot be tainted or revoked here; revoke it at the upstream CA", ErrAuthorityState, id)
		}
		r.State = StateTainted
		r.TaintedAt = now
		c.o.Logger.Warn("ca: tainted authority (operator)", "kind", k, "id", id)
		return st.with(k, list), id, nil
	})
}

// Revoke removes a tainted authority from the bundle and from the CA's
// state for good: nothing it signed verifies against the bundle any more,
// Signed no longer recognises it, IssuerState reports StateRevoked, and a
// stored state that holds it again is refused (ErrRevokedAuthority). kind
// "" finds it by ID alone. Only a tainted authority can be revoked
// (ErrAuthorityState). The state remembers at most 64 revoked
// authorities at once, each until its NotAfter (ErrTooManyAuthorities
// beyond: the authority stays tainted).
func (c *CA) Revoke(ctx context.Context, kind AuthorityKind, id string) (a Authority, changed bool, err error) {
	return c.operate(ctx, func(st *state, now time.Time) (*state, string, error) {
		if st.isRevoked(id) || (!st.holds(id) && c.revokedIDs[id]) {
			return nil, "", fmt.Errorf("%w: authority %s is already revoked", ErrAuthorityState, id)
		}
		k, i, err := st.lookup(kind, id)
		if err != nil {
			return nil, "", err
		}
		list := st.list(k)
		r := list[i]
		if r.State != StateTainted {
			return nil, "", fmt.Errorf("%w: %s authority %s is %s; only a tainted authority can be revoked: taint it first (`moatless ca taint %s`)", ErrAuthorityState, k, id, r.State, id)
		}
		v := revoked{Kind: k, ID: id, Cert: r.Cert, NotBefore: r.NotBefore, NotAfter: r.NotAfter, RevokedAt: now}
		if err := v.parse(); err != nil {
			return nil, "", fmt.Errorf("ca: revoke %s: %w", id, err)
		}
		// A state with more than maxRevoked is refused when read back:
		// refuse the step instead of saving one no replica could open.
		live := slices.DeleteFunc(slices.Clone(st.Revoked), func(v revoked) bool { return !now.Before(v.NotAfter) })
		if len(live) >= maxRevoked {
			first := slices.MinFunc(live, func(a, b revoked) int { return a.NotAfter.Compare(b.NotAfter) })
			return nil, "", fmt.Errorf("%w: %d authorities are revoked and remembered until their NotAfter; the next can be revoked from %s (%s authority %s stays tainted until then)", ErrTooManyAuthorities, len(live), first.NotAfter.UTC().Format(time.RFC3339), k, id)
		}
		next := st.with(k, slices.Delete(slices.Clone(list), i, i+1))
		next.Revoked = append(live, v)
		c.o.Logger.Warn("ca: revoked authority (operator)", "kind", k, "id", id)
		return next, id, nil
	})
}

// errSequenceHigh ends RaiseSequence's step without a save.
var errSequenceHigh = errors.New("ca: the bundle sequence is already higher")

// RaiseSequence makes the bundle's sequence number greater than min, if it
// is not already, with its authorities unchanged, and reports whether it
// raised it. Agents refuse a bundle whose sequence is lower than the one
// they hold (a lagging replica's): after a store was restored on purpose
// from a backup older than a bundle this server published, the server
// raises the restored state past what it published, and the agents take
// it again.
func (c *CA) RaiseSequence(ctx context.Context, min uint64) (bool, error) {
	_, changed, err := c.operate(ctx, func(st *state, _ time.Time) (*state, string, error) {
		if st.Sequence > min {
			return nil, "", errSequenceHigh
		}
		next := *st
		next.Sequence = min + 1
		return &next, "", nil
	})
	if errors.Is(err, errSequenceHigh) {
		return false, nil
	}
	return changed, err
}

// operate applies an operator's step: it adopts the stored state, computes
// the next one with fn (which returns the ID of the authority it changed),
// saves it and swaps the snapshot. A step that loses a compare-and-swap is
// computed again on the winner's state. changed reports whether the
// bundle changed, by this step or by an adopted one.
func (c *CA) operate(ctx context.Context, fn func(st *state, now time.Time) (*state, string, error)) (Authority, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := false
	for attempt := 0; ; attempt++ {
		adopted, err := c.sync(ctx)
		changed = changed || adopted
		if err != nil {
			return Authority{}, changed, err
		}
		cur := c.cur.Load()
		now := c.o.Now()
		next, id, err := fn(cur.st, now)
		if err != nil {
			return Authority{}, changed, err
		}
		next.Generation = cur.st.Generation + 1
		if bundleKey(next) != bundleKey(cur.st) {
			next.Sequence = cur.st.Sequence + 1
		}
		snap, err := c.buildSnapshot(next)
		if err != nil {
			return Authority{}, changed, err
		}
		if snap.blob, err = c.save(ctx, next, cur.blob); err != nil {
			if errors.Is(err, ErrStateConflict) && attempt < 3 {
				continue
			}
			return Authority{}, changed, err
		}
		c.cur.Store(snap)
		c.noteRevoked(next)
		changed = changed || next.Sequence != cur.st.Sequence
		for _, a := range c.Status() {
			if a.ID == id {
				return a, changed, nil
			}
		}
		return Authority{}, changed, nil
	}
}

func checkKind(kind AuthorityKind) error {
	if kind != KindX509 && kind != KindJWT {
		return fmt.Errorf("%w: authority kind %q: want %q or %q", ErrInvalidRequest, kind, KindX509, KindJWT)
	}
	return nil
}

// list returns st's authorities of kind.
func (st *state) list(kind AuthorityKind) []record {
	if kind == KindX509 {
		return st.X509
	}
	return st.JWT
}

// with returns a copy of st whose authorities of kind are list.
func (st *state) with(kind AuthorityKind, list []record) *state {
	next := *st
	if kind == KindX509 {
		next.X509 = list
	} else {
		next.JWT = list
	}
	return &next
}

// lookup finds the authority id, of kind or (kind "") of either kind.
func (st *state) lookup(kind AuthorityKind, id string) (AuthorityKind, int, error) {
	if id == "" {
		return "", 0, fmt.Errorf("%w: an authority ID is required", ErrInvalidRequest)
	}
	kinds := []AuthorityKind{KindX509, KindJWT}
	if kind != "" {
		if err := checkKind(kind); err != nil {
			return "", 0, err
		}
		kinds = []AuthorityKind{kind}
	}
	for _, k := range kinds {
		if i := slices.IndexFunc(st.list(k), func(r record) bool { return r.ID == id }); i >= 0 {
			return k, i, nil
		}
	}
	return "", 0, unknownAuthority(st, kind, id)
}

func unknownAuthority(st *state, kind AuthorityKind, id string) error {
	what := "authority"
	if kind != "" {
		what = string(kind) + " authority"
	}
	if st.isRevoked(id) {
		return fmt.Errorf("%w: %s %s was revoked", ErrAuthorityState, what, id)
	}
	return fmt.Errorf("%w: no %s has ID %q (see `moatless ca show`)", ErrUnknownAuthority, what, id)
}

// IDKind returns the kind of authority an ID names by its form: 40
// lower-case hex digits (an X.509 subject key ID, 20 bytes) or 43
// base64url characters without padding (a JWT key ID, a SHA-256
// thumbprint), in its canonical spelling: the last character's unused
// bits are zero, so one key ID has one spelling. Anything else is
// ErrInvalidRequest.
func IDKind(id string) (AuthorityKind, error) {
	switch {
	case len(id) == 40 && strings.Trim(id, "0123456789abcdef") == "":
		return KindX509, nil
	case len(id) == 43 && strings.Trim(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == "":
		if b, err := base64.RawURLEncoding.Strict().DecodeString(id); err == nil && len(b) == sha256.Size {
			return KindJWT, nil
		}
	}
	if len(id) > 80 {
		id = id[:80] + "..."
	}
	return "", fmt.Errorf("%w: %q is not an authority ID: an X.509 authority has 40 lower-case hex digits, a JWT key 43 base64url characters", ErrInvalidRequest, id)
}
