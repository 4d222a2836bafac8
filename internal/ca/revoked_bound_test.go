package ca

import (
	"context"
	"testing"
)

// The state holds at most maxRevoked revoked authorities (each until its
// NotAfter), and a stored state with more is refused as invalid. Revoke
// must refuse the one too many rather than save a state that no replica,
// this one after a restart included, can open again.
func TestRevokeBeyondTheBoundIsRefusedNotSaved(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	var err error
	for i := 0; i <= maxRevoked && err == nil; i++ {
		old := activeID(t, e.ca, KindJWT)
		if _, _, err := e.ca.Prepare(ctx, KindJWT); err != nil {
			t.Fatalf("cycle %d: prepare: %v", i, err)
		}
		if _, _, err := e.ca.Activate(ctx, KindJWT, ""); err != nil {
			t.Fatalf("cycle %d: activate: %v", i, err)
		}
		if _, _, err := e.ca.Taint(ctx, KindJWT, old); err != nil {
			t.Fatalf("cycle %d: taint: %v", i, err)
		}
		_, _, err = e.ca.Revoke(ctx, KindJWT, old)
		if err != nil && (i != maxRevoked || !isErr(err, ErrTooManyAuthorities)) {
			t.Fatalf("cycle %d: revoke: %v", i, err)
		}
	}
	if err == nil {
		t.Fatalf("%d revocations within their authorities' life were all saved", maxRevoked+1)
	}
	if _, err := Open(ctx, e.opts); err != nil {
		t.Fatalf("the saved state does not open again: %v", err)
	}
}
