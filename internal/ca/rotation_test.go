package ca

import (
	"context"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// bundleView is what a test compares of a bundle.
type bundleView struct {
	X509 []string // subject key IDs of the X.509 authorities, sorted
	JWT  []string // key IDs, sorted
	Seq  uint64
}

func viewBundle(t *testing.T, c *CA) bundleView {
	t.Helper()
	b := c.Bundle()
	var v bundleView
	for _, cert := range b.X509Authorities() {
		v.X509 = append(v.X509, hex.EncodeToString(cert.SubjectKeyId))
	}
	for kid := range b.JWTAuthorities() {
		v.JWT = append(v.JWT, kid)
	}
	slices.Sort(v.X509)
	slices.Sort(v.JWT)
	v.Seq, _ = b.SequenceNumber()
	if hint, ok := b.RefreshHint(); !ok || hint != DefaultRefreshHint {
		t.Errorf("refresh hint = %v, %v; want %v", hint, ok, DefaultRefreshHint)
	}
	return v
}

func sorted(ids ...string) []string {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
}

// idsIn returns the IDs of the authorities of kind in state s.
func idsIn(c *CA, kind AuthorityKind, s AuthorityState) []string {
	var out []string
	for _, a := range c.Status() {
		if a.Kind == kind && a.State == s {
			out = append(out, a.ID)
		}
	}
	return out
}

var statusCmp = cmpopts.IgnoreFields(Authority{}, "Certificate")

// checkPersisted reopens the CA from the store, as a restarted server
// would, and checks it comes back exactly as the running one is: every
// step was saved before it took effect.
func checkPersisted(t *testing.T, e *env) {
	t.Helper()
	re := e.reopen(t)
	if diff := cmp.Diff(e.ca.Status(), re.Status(), statusCmp); diff != "" {
		t.Errorf("reopened status differs (-running +reopened):\n%s", diff)
	}
	if !re.Bundle().Equal(e.ca.Bundle()) {
		t.Errorf("reopened bundle differs")
	}
}

func tick(t *testing.T, e *env, wantChanged bool) {
	t.Helper()
	changed, err := e.ca.Tick(context.Background())
	if err != nil {
		t.Fatalf("Tick at %v: %v", e.clock.Now(), err)
	}
	if changed != wantChanged {
		t.Fatalf("Tick at %v: changed = %v, want %v", e.clock.Now(), changed, wantChanged)
	}
}

// TestRotationFullCycle drives the clock through a whole rotation with the
// default options and checks the bundle and states at each step, and that
// SVIDs of the old and the new authority both verify during the overlap.
func TestRotationFullCycle(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	_ = ctx
	st := e.ca.Status()
	if got := len(st); got != 2 {
		t.Fatalf("%d authorities at start, want 2", got)
	}
	x509A, jwtA := activeID(t, e.ca, KindX509), activeID(t, e.ca, KindJWT)
	nbA, naA := st[0].NotBefore, st[0].NotAfter
	if diff := cmp.Diff(bundleView{X509: []string{x509A}, JWT: []string{jwtA}, Seq: 1}, viewBundle(t, e.ca)); diff != "" {
		t.Fatalf("initial bundle (-want +got):\n%s", diff)
	}
	prepareAt := nbA.Add(12 * time.Hour)  // 1/2 of 24h
	activateAt := nbA.Add(20 * time.Hour) // 5/6 of 24h

	// Nothing is due before half-life.
	e.clock.Set(prepareAt.Add(-time.Second))
	tick(t, e, false)

	// Half-life: new authorities are prepared and published, not signing.
	e.clock.Set(prepareAt)
	tick(t, e, true)
	x509B, jwtB := idsIn(e.ca, KindX509, StatePrepared), idsIn(e.ca, KindJWT, StatePrepared)
	if len(x509B) != 1 || len(jwtB) != 1 {
		t.Fatalf("prepared: x509 %v jwt %v, want one each", x509B, jwtB)
	}
	if diff := cmp.Diff(bundleView{X509: sorted(x509A, x509B[0]), JWT: sorted(jwtA, jwtB[0]), Seq: 2}, viewBundle(t, e.ca)); diff != "" {
		t.Fatalf("bundle after prepare (-want +got):\n%s", diff)
	}
	for _, a := range e.ca.Status() {
		if a.State == StatePrepared && !a.ActivateAt.Equal(activateAt) {
			t.Errorf("%s %s activates at %v, want %v", a.Kind, a.ID, a.ActivateAt, activateAt)
		}
	}
	prepIs := mustSign(t, e.ca, testID, 0)
	if got := hex.EncodeToString(prepIs.Chain[0].AuthorityKeyId); got != x509A {
		t.Errorf("a prepared authority signed: AKID %s, want the active %s", got, x509A)
	}
	checkPersisted(t, e)

	// Just before activation the old authority still signs.
	e.clock.Set(activateAt.Add(-time.Second))
	tick(t, e, false)
	oldSVID := mustSign(t, e.ca, testID, 0)
	oldJWT, _, err := e.ca.SignJWTSVID(testID, []string{"aud"}, 0)
	if err != nil {
		t.Fatal(err)
	}

	// Activation: the bundle does not change (the key was already in it),
	// the new authority signs, the old one is retired but kept.
	e.clock.Set(activateAt)
	tick(t, e, false)
	if diff := cmp.Diff([]string{x509A}, idsIn(e.ca, KindX509, StateRetired)); diff != "" {
		t.Errorf("retired x509 (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(x509B, idsIn(e.ca, KindX509, StateActive)); diff != "" {
		t.Errorf("active x509 (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(bundleView{X509: sorted(x509A, x509B[0]), JWT: sorted(jwtA, jwtB[0]), Seq: 2}, viewBundle(t, e.ca)); diff != "" {
		t.Fatalf("bundle after activation (-want +got):\n%s", diff)
	}
	newSVID := mustSign(t, e.ca, testID, 0)
	if got := hex.EncodeToString(newSVID.Chain[0].AuthorityKeyId); got != x509B[0] {
		t.Errorf("new SVID AKID %s, want %s", got, x509B[0])
	}
	newJWT, _, err := e.ca.SignJWTSVID(testID, []string{"aud"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	checkPersisted(t, e)

	// Overlap: SVIDs of both authorities verify against the one bundle.
	at := activateAt.Add(time.Minute)
	for name, is := range map[string]*Issued{"old": oldSVID, "new": newSVID} {
		if _, _, err := x509svid.Verify(is.Chain, e.ca.Bundle(), x509svid.WithTime(at)); err != nil {
			t.Errorf("%s X509-SVID during overlap: %v", name, err)
		}
	}
	for name, tok := range map[string]string{"old": oldJWT, "new": newJWT} {
		if _, err := verifyJWT(tok, e.ca.Bundle(), "aud", at); err != nil {
			t.Errorf("%s JWT-SVID during overlap: %v", name, err)
		}
	}
	if strings.Split(oldJWT, ".")[0] == strings.Split(newJWT, ".")[0] {
		t.Errorf("old and new JWT-SVIDs have the same header (same kid)")
	}

	// Half-life of B comes a minute before A expires: C is prepared.
	st = e.ca.Status()
	var nbB time.Time
	for _, a := range st {
		if a.ID == x509B[0] {
			nbB = a.NotBefore
		}
	}
	e.clock.Set(nbB.Add(12 * time.Hour))
	tick(t, e, true)
	x509C := idsIn(e.ca, KindX509, StatePrepared)
	if diff := cmp.Diff([]AuthorityState{StateRetired, StateActive, StatePrepared}, statesOf(e.ca.Status(), KindX509)); diff != "" {
		t.Errorf("x509 states (-want +got):\n%s", diff)
	}
	if v := viewBundle(t, e.ca); len(v.X509) != 3 || v.Seq != 3 {
		t.Errorf("bundle = %+v, want 3 X.509 authorities at sequence 3", v)
	}

	// A's NotAfter: every SVID it signed has expired; it leaves the bundle.
	e.clock.Set(naA.Add(-time.Second))
	tick(t, e, false)
	e.clock.Set(naA)
	if _, _, err := x509svid.Verify(oldSVID.Chain, e.ca.Bundle(), x509svid.WithTime(naA)); err == nil {
		t.Errorf("an SVID of A is still valid at A's NotAfter")
	}
	tick(t, e, true)
	v := viewBundle(t, e.ca)
	if slices.Contains(v.X509, x509A) || slices.Contains(v.JWT, jwtA) {
		t.Errorf("A still in the bundle after its NotAfter: %+v", v)
	}
	if diff := cmp.Diff(sorted(x509B[0], x509C[0]), v.X509); diff != "" || v.Seq != 4 {
		t.Errorf("bundle after drop = %+v (x509 diff %s), want B and C at sequence 4", v, diff)
	}
	if is := mustSign(t, e.ca, testID, 0); hex.EncodeToString(is.Chain[0].AuthorityKeyId) != x509B[0] {
		t.Errorf("B no longer signs after A was dropped")
	} else if _, _, err := x509svid.Verify(is.Chain, e.ca.Bundle(), x509svid.WithTime(naA)); err != nil {
		t.Errorf("B's SVID does not verify after A was dropped: %v", err)
	}
	checkPersisted(t, e)
}

// TestRotationJWTWithGoSpiffe lines the fake clock up with the real one at
// the moment of activation, so go-spiffe's jwtsvid (which reads the real
// clock) validates tokens of the old and the new key from one bundle.
func TestRotationJWTWithGoSpiffe(t *testing.T) {
	realNow := time.Now().Truncate(time.Second)
	e := newEnv(t, func(o *Options) { o.Now = newClock(realNow.Add(-20*time.Hour + caBackdate)).Now })
	clock := e.clock
	e.opts.Now = clock.Now
	// newEnv installed its own clock; reopen on the shifted one.
	clock.Set(realNow.Add(-20*time.Hour + caBackdate))
	e.ca = e.reopen(t)
	var nb time.Time
	for _, a := range e.ca.Status() {
		if a.Kind == KindJWT {
			nb = a.NotBefore
		}
	}
	clock.Set(nb.Add(12 * time.Hour))
	tick(t, e, true)
	activation := nb.Add(20 * time.Hour)
	if activation.After(time.Now()) {
		t.Fatalf("activation %v is after the real clock", activation)
	}
	clock.Set(activation.Add(-30 * time.Second))
	oldTok, _, err := e.ca.SignJWTSVID(testID, []string{"aud"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	clock.Set(activation)
	tick(t, e, false)
	newTok, _, err := e.ca.SignJWTSVID(testID, []string{"aud"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"old_key": oldTok, "new_key": newTok} {
		t.Run(name, func(t *testing.T) {
			if _, err := jwtsvid.ParseAndValidate(tok, e.ca.Bundle(), []string{"aud"}); err != nil {
				t.Errorf("jwtsvid.ParseAndValidate: %v", err)
			}
		})
	}
}

func TestTickSaveFailureChangesNothing(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	before, beforeStatus := viewBundle(t, e.ca), e.ca.Status()
	blob, saves := e.store.snapshot()
	e.clock.Advance(13 * time.Hour) // past half-life: a prepare is due
	e.store.setSaveErr(errors.New("disk full"))
	changed, err := e.ca.Tick(ctx)
	if err == nil || !strings.Contains(err.Error(), "disk full") || changed {
		t.Fatalf("Tick = %v, %v; want the store's error and no change", changed, err)
	}
	if diff := cmp.Diff(before, viewBundle(t, e.ca)); diff != "" {
		t.Errorf("bundle changed on a failed save (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(beforeStatus, e.ca.Status(), statusCmp); diff != "" {
		t.Errorf("status changed on a failed save:\n%s", diff)
	}
	if b, n := e.store.snapshot(); n != saves || string(b) != string(blob) {
		t.Errorf("store changed on a failed save")
	}
	if err := e.ca.Rotate(ctx); err == nil {
		t.Errorf("Rotate succeeded with a failing store")
	}
	// The store recovers; the next Tick does the work.
	e.store.setSaveErr(nil)
	tick(t, e, true)
	if got := viewBundle(t, e.ca); got.Seq != before.Seq+1 || len(got.X509) != 2 {
		t.Errorf("bundle after recovery = %+v", got)
	}
	checkPersisted(t, e)
}

func TestRotateAdmin(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	x509A := activeID(t, e.ca, KindX509)
	e.clock.Advance(time.Hour)
	now := e.clock.Now()
	if err := e.ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	for _, a := range e.ca.Status() {
		if a.State == StatePrepared && !a.ActivateAt.Equal(now.Add(DefaultActivationDelay)) {
			t.Errorf("%s activates at %v, want now + ActivationDelay", a.Kind, a.ActivateAt)
		}
	}
	if diff := cmp.Diff([]AuthorityState{StateActive, StatePrepared}, statesOf(e.ca.Status(), KindJWT)); diff != "" {
		t.Errorf("jwt states (-want +got):\n%s", diff)
	}
	if v := viewBundle(t, e.ca); len(v.X509) != 2 || len(v.JWT) != 2 || v.Seq != 2 {
		t.Errorf("bundle after Rotate = %+v", v)
	}
	// A second Rotate does not prepare another one.
	if err := e.ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(e.ca.Status()); n != 4 {
		t.Errorf("%d authorities after a second Rotate, want 4", n)
	}
	// Not before the delay.
	e.clock.Advance(DefaultActivationDelay - time.Second)
	tick(t, e, false)
	if activeID(t, e.ca, KindX509) != x509A {
		t.Errorf("activated before ActivationDelay")
	}
	e.clock.Advance(time.Second)
	tick(t, e, false)
	if activeID(t, e.ca, KindX509) == x509A {
		t.Errorf("not activated after ActivationDelay")
	}
	if got := idsIn(e.ca, KindX509, StateRetired); !slices.Equal(got, []string{x509A}) {
		t.Errorf("retired = %v, want %s", got, x509A)
	}
	checkPersisted(t, e)
}

// Rotate brings a scheduled activation forward to the earliest the
// publication delay allows.
func TestRotateBringsScheduledActivationForward(t *testing.T) {
	e := newEnv(t, nil)
	e.clock.Advance(12 * time.Hour)
	tick(t, e, true) // scheduled prepare, activation at 5/6
	prepared := e.clock.Now()
	e.clock.Advance(time.Hour)
	if err := e.ca.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, a := range e.ca.Status() {
		if a.State == StatePrepared && !a.ActivateAt.Equal(prepared.Add(DefaultActivationDelay)) {
			t.Errorf("%s activates at %v, want %v", a.Kind, a.ActivateAt, prepared.Add(DefaultActivationDelay))
		}
	}
	tick(t, e, false) // already past the new activation time
	if got := statesOf(e.ca.Status(), KindX509); !slices.Equal(got, []AuthorityState{StateRetired, StateActive}) {
		t.Errorf("x509 states = %v", got)
	}
}

func TestRotateRefusedWhenBundleFull(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	for i := 1; i < maxAuthorities; i++ {
		if err := e.ca.Rotate(ctx); err != nil {
			t.Fatalf("Rotate %d: %v", i, err)
		}
		e.clock.Advance(DefaultActivationDelay)
		tick(t, e, false)
	}
	blob, _ := e.store.snapshot()
	err := e.ca.Rotate(ctx)
	if !errors.Is(err, ErrTooManyAuthorities) {
		t.Fatalf("Rotate = %v, want ErrTooManyAuthorities", err)
	}
	if b, _ := e.store.snapshot(); string(b) != string(blob) {
		t.Errorf("a refused Rotate changed the store")
	}
	// Scheduled rotation is never blocked by the cap.
	e.clock.Advance(13 * time.Hour)
	if _, err := e.ca.Tick(ctx); err != nil {
		t.Errorf("Tick with a full bundle: %v", err)
	}
}

// After an outage longer than every authority's life the CA starts over at
// once rather than refusing to sign.
func TestOutageLongerThanCALife(t *testing.T) {
	e := newEnv(t, nil)
	oldX, oldJ := activeID(t, e.ca, KindX509), activeID(t, e.ca, KindJWT)
	e.clock.Advance(3 * DefaultCATTL)
	if _, err := e.ca.SignX509SVID(csrFor(t, newP256(t), nil), testID, 0); !errors.Is(err, ErrNoAuthority) {
		t.Errorf("sign with an expired authority: %v, want ErrNoAuthority", err)
	}
	if _, _, err := e.ca.SignJWTSVID(testID, []string{"a"}, 0); !errors.Is(err, ErrNoAuthority) {
		t.Errorf("JWT sign with an expired authority: %v, want ErrNoAuthority", err)
	}
	// A restart (Open) catches up by itself, and says what happened.
	re := e.reopen(t)
	if !strings.Contains(e.logs.String(), "no valid authority left") {
		t.Errorf("no warning logged for an activation without publication")
	}
	v := re.Status()
	if len(v) != 2 || v[0].State != StateActive || v[1].State != StateActive || v[0].ID == oldX || v[1].ID == oldJ {
		t.Fatalf("after outage: %+v", v)
	}
	is, err := re.SignX509SVID(csrFor(t, newP256(t), nil), testID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(is.Chain, re.Bundle(), x509svid.WithTime(e.clock.Now())); err != nil {
		t.Errorf("verify after outage: %v", err)
	}
	// The running instance catches up on Tick the same way.
	tick(t, e, true)
	if activeID(t, e.ca, KindX509) == oldX {
		t.Errorf("Tick did not replace the expired authority")
	}
}

// Signers never block on, or race with, a rotation.
func TestConcurrentSigningDuringRotation(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	csr := csrFor(t, newP256(t), nil)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 8)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				is, err := e.ca.SignX509SVID(csr, testID, 0)
				if err != nil {
					errs <- err
					return
				}
				if _, _, err := x509svid.Verify(is.Chain, e.ca.Bundle(), x509svid.WithTime(e.clock.Now())); err != nil {
					errs <- err
					return
				}
				if _, _, err := e.ca.SignJWTSVID(testID, []string{"a"}, 0); err != nil {
					errs <- err
					return
				}
				_ = e.ca.Status()
			}
		}()
	}
	for range 3 {
		if err := e.ca.Rotate(ctx); err != nil {
			t.Error(err)
		}
		e.clock.Advance(DefaultActivationDelay)
		if _, err := e.ca.Tick(ctx); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("signer: %v", err)
	}
}

// With a short CA life the successor activates when the active authority
// would otherwise have to shorten default-TTL SVIDs, not at 5/6.
func TestScheduleRespectsSVIDTTL(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.CATTL = 6 * time.Hour
		o.X509SVIDTTL = time.Hour
		o.ActivationDelay = time.Hour
		o.RefreshHint = time.Minute
	})
	nb := e.ca.Status()[0].NotBefore
	// 5/6 of 6h = 5h = NotAfter − 1h: both rules agree; prepare at
	// min(3h, 5h − 1h) = 3h.
	e.clock.Set(nb.Add(3*time.Hour - time.Second))
	tick(t, e, false)
	e.clock.Set(nb.Add(3 * time.Hour))
	tick(t, e, true)
	for _, a := range e.ca.Status() {
		if a.Kind == KindX509 && a.State == StatePrepared && !a.ActivateAt.Equal(nb.Add(5*time.Hour)) {
			t.Errorf("activates at %v, want NotBefore+5h", a.ActivateAt)
		}
	}
	// Every SVID signed by the active one before activation gets its full
	// TTL.
	e.clock.Set(nb.Add(5*time.Hour - time.Second))
	is := mustSign(t, e.ca, testID, 0)
	if got := is.NotAfter.Sub(e.clock.Now()); got != time.Hour {
		t.Errorf("SVID TTL %v just before activation, want 1h", got)
	}
}
