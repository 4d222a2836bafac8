package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

// TestRevocationWaitsForAnExchangeOfItsToken: on PostgreSQL (READ
// COMMITTED) a revocation of a token that reads the tokens exchanged from
// it while an exchange from it is not committed yet would miss that
// exchange, whose own check of the subject token cannot see the
// uncommitted revocation either: the exchanged token would live on. Both
// write the subject token's link row first, so the revocation waits for
// the exchange and then revokes its token. The test holds the exchange's
// transaction open until the revocation has finished or waits for a lock.
func TestRevocationWaitsForAnExchangeOfItsToken(t *testing.T) {
	db := storetest.Postgres(t)
	o := db.OAuth()
	ctx := t.Context()
	now := time.Now()
	exp := now.Add(10 * time.Minute)
	inTx, release, exchanged := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		exchanged <- o.Atomically(ctx, func(ctx context.Context) error {
			if err := o.RecordExchange(ctx, "subject", exp, "exchanged", exp.Add(-time.Minute), 1000); err != nil {
				return err
			}
			close(inTx)
			<-release
			return nil
		})
	}()
	<-inTx
	type result struct {
		toks []token.RevokedToken
		err  error
	}
	revoked := make(chan result, 1)
	go func() {
		toks, err := o.RevokeTokenID(ctx, "subject", exp, now)
		revoked <- result{toks, err}
	}()
	var r *result
	for deadline := time.Now().Add(20 * time.Second); r == nil; time.Sleep(time.Millisecond) {
		select {
		case x := <-revoked:
			r = &x
		default:
		}
		var waiting int
		if err := db.SQL().QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND datname = current_database()`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if r != nil || waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the revocation neither finished nor waits for a lock")
		}
	}
	close(release)
	if err := <-exchanged; err != nil {
		t.Fatal(err)
	}
	if r == nil {
		x := <-revoked
		r = &x
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	var got []string
	for _, tk := range r.toks {
		got = append(got, tk.JTI)
	}
	if len(got) != 2 || got[1] != "exchanged" {
		t.Fatalf("the revocation listed %v, want the subject and the token exchanged from it", got)
	}
	if err := o.RecordExchange(ctx, "subject", exp, "late", exp, 1000); err == nil {
		t.Fatal("an exchange from a revoked token was recorded")
	}
}

// TestExchangeTreeBoundHoldsAgainstRacingExchanges: on PostgreSQL two
// exchanges in different branches of one tree, one token short of its
// bound, make one token, not two: each locks the tree's root row before
// it counts, so the second counts after the first committed. The test
// holds the first exchange's transaction open until the second has
// finished or waits for a lock.
func TestExchangeTreeBoundHoldsAgainstRacingExchanges(t *testing.T) {
	db := storetest.Postgres(t)
	o := db.OAuth()
	ctx := t.Context()
	exp := time.Now().Add(10 * time.Minute)
	for _, kid := range []string{"race-a", "race-b"} {
		if err := o.RecordExchange(ctx, "race-root", exp, kid, exp, 3); err != nil {
			t.Fatal(err)
		}
	}
	inTx, release, first := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		first <- o.Atomically(ctx, func(ctx context.Context) error {
			if err := o.RecordExchange(ctx, "race-a", exp, "race-a1", exp, 3); err != nil {
				return err
			}
			close(inTx)
			<-release
			return nil
		})
	}()
	<-inTx
	second := make(chan error, 1)
	go func() { second <- o.RecordExchange(ctx, "race-b", exp, "race-b1", exp, 3) }()
	var err2 error
	done := false
	for deadline := time.Now().Add(20 * time.Second); !done; time.Sleep(time.Millisecond) {
		select {
		case err2 = <-second:
			done = true
		default:
		}
		var waiting int
		if err := db.SQL().QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND datname = current_database()`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if done || waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second exchange neither finished nor waits for a lock")
		}
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if !done {
		err2 = <-second
	}
	if !errors.Is(err2, token.ErrTooManyExchanges) {
		t.Fatalf("the second exchange at the bound: %v, want ErrTooManyExchanges", err2)
	}
}
