package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

func TestOAuthClients(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		o := db.OAuth()
		now := time.Unix(1_800_000_000, 0).UTC()
		c := &token.Client{ID: "c1", Name: "orders", SecretHash: []byte{1, 2, 3}, CreatedAt: now, UpdatedAt: now,
			ClientSpec: token.ClientSpec{AuthMethod: token.AuthTLSClient, GrantTypes: []string{"client_credentials"}, SPIFFEID: "spiffe://td/ns/a/sa/orders"}}
		if err := o.CreateClient(ctx, c); err != nil {
			t.Fatal(err)
		}
		for name, dup := range map[string]*token.Client{
			"same_id":        {ID: "c1", Name: "other"},
			"same_name":      {ID: "c2", Name: "orders"},
			"same_spiffe_id": {ID: "c3", Name: "x", ClientSpec: token.ClientSpec{SPIFFEID: "spiffe://td/ns/a/sa/orders"}},
		} {
			if err := o.CreateClient(ctx, dup); !errors.Is(err, token.ErrConflict) || !errors.Is(err, store.ErrConflict) {
				t.Errorf("%s: got %v, want conflict", name, err)
			}
		}
		got, err := o.ClientBySPIFFEID(ctx, "spiffe://td/ns/a/sa/orders")
		if err != nil || got.ID != "c1" || got.AuthMethod != token.AuthTLSClient || !got.CreatedAt.Equal(now) {
			t.Fatalf("by spiffe id: %+v %v", got, err)
		}
		if err := o.SetClientSecret(ctx, "c1", []byte{9}, now.Add(time.Hour), now); err != nil {
			t.Fatal(err)
		}
		if got, _ := o.Client(ctx, "c1"); string(got.SecretHash) != "\x09" || string(got.PreviousSecretHash) != "\x01\x02\x03" || !got.PreviousSecretUntil.Equal(now.Add(time.Hour)) {
			t.Fatalf("secret hashes after rotation with grace: %x %x %v", got.SecretHash, got.PreviousSecretHash, got.PreviousSecretUntil)
		}
		if err := o.SetClientSecret(ctx, "c1", []byte{8}, time.Time{}, now); err != nil {
			t.Fatal(err)
		}
		if got, _ := o.Client(ctx, "c1"); string(got.SecretHash) != "\x08" || got.PreviousSecretHash != nil || !got.PreviousSecretUntil.IsZero() {
			t.Fatalf("rotation without grace kept the old secret: %x %v", got.PreviousSecretHash, got.PreviousSecretUntil)
		}
		if err := o.SetClientSecret(ctx, "nope", []byte{9}, time.Time{}, now); !errors.Is(err, token.ErrNotFound) {
			t.Fatalf("got %v", err)
		}
		if err := o.DeleteClient(ctx, "c1"); err != nil {
			t.Fatal(err)
		}
		if _, err := o.Client(ctx, "c1"); !errors.Is(err, token.ErrNotFound) || !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("got %v", err)
		}
		if err := o.DeleteClient(ctx, "c1"); !errors.Is(err, token.ErrNotFound) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestOAuthUsersTOTPAndRecovery(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		o := db.OAuth()
		u := &token.User{ID: "u1", Name: "alice", PasswordHash: "$argon2id$x", UserSpec: token.UserSpec{Roles: []string{"admin"}}}
		if err := o.CreateUser(ctx, u); err != nil {
			t.Fatal(err)
		}
		if err := o.CreateUser(ctx, &token.User{ID: "u2", Name: "alice"}); !errors.Is(err, token.ErrConflict) {
			t.Fatalf("got %v", err)
		}
		// Steps only move forward; a replay of the same or an older step
		// is a conflict.
		for i, tc := range []struct {
			step int64
			ok   bool
		}{{100, true}, {100, false}, {99, false}, {101, true}} {
			err := o.UseTOTPStep(ctx, "u1", tc.step)
			if (err == nil) != tc.ok {
				t.Fatalf("case %d step %d: got %v", i, tc.step, err)
			}
		}
		// UpdateUser never touches the TOTP state, whatever u says.
		u.TOTPEnabled, u.TOTPSecret, u.TOTPLastStep = true, []byte("sealed"), 5
		if err := o.UpdateUser(ctx, u); err != nil {
			t.Fatal(err)
		}
		got, _ := o.User(ctx, "alice")
		if got.TOTPEnabled || got.TOTPSecret != nil || got.TOTPLastStep != 101 || got.Roles[0] != "admin" {
			t.Fatalf("%+v", got)
		}
		if err := o.SetRecoveryCodes(ctx, "u1", [][]byte{{1}, {2}}); err != nil {
			t.Fatal(err)
		}
		if err := o.UseRecoveryCode(ctx, "u1", []byte{1}); err != nil {
			t.Fatal(err)
		}
		if err := o.UseRecoveryCode(ctx, "u1", []byte{1}); !errors.Is(err, token.ErrNotFound) {
			t.Fatalf("second use: %v", err)
		}
		if n, _ := o.RecoveryCodesLeft(ctx, "u1"); n != 1 {
			t.Fatalf("left %d", n)
		}
		if err := o.DeleteUser(ctx, "alice"); err != nil {
			t.Fatal(err)
		}
		if n, _ := o.RecoveryCodesLeft(ctx, "u1"); n != 0 {
			t.Fatalf("recovery codes survive user: %d", n)
		}
	})
}

// Two enrolments submitted at the same instant must not both replace the
// user's second factor: EnableTOTP enables TOTP only if it is not enabled,
// atomically, so exactly one of many concurrent calls wins and the others
// change nothing (neither the key nor the winner's recovery codes).
func TestOAuthEnableTOTPOnlyOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		o := db.OAuth()
		at := time.Unix(1_800_000_000, 0).UTC()
		if err := o.CreateUser(ctx, &token.User{ID: "u1", Name: "mia", PasswordHash: "$argon2id$x", CreatedAt: at, UpdatedAt: at}); err != nil {
			t.Fatal(err)
		}
		const n = 8
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			errs  = make([]error, n)
		)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[i] = o.EnableTOTP(ctx, "u1", []byte{byte(i)}, int64(1000+i), [][]byte{{byte(i), 1}, {byte(i), 2}}, at)
			}()
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner < 0:
				winner = i
			case err == nil:
				t.Fatalf("enrolments %d and %d both enabled TOTP", winner, i)
			case !errors.Is(err, token.ErrTOTPEnabled) || !errors.Is(err, store.ErrConflict):
				t.Fatalf("enrolment %d: got %v, want ErrTOTPEnabled", i, err)
			}
		}
		if winner < 0 {
			t.Fatal("no enrolment enabled TOTP")
		}
		u, err := o.UserByID(ctx, "u1")
		if err != nil {
			t.Fatal(err)
		}
		if !u.TOTPEnabled || !slices.Equal(u.TOTPSecret, []byte{byte(winner)}) || u.TOTPLastStep != int64(1000+winner) {
			t.Fatalf("stored %v %x step %d, want the winner's (%d)", u.TOTPEnabled, u.TOTPSecret, u.TOTPLastStep, winner)
		}
		for i := range n {
			err := o.UseRecoveryCode(ctx, "u1", []byte{byte(i), 1})
			if (err == nil) != (i == winner) {
				t.Fatalf("recovery code of enrolment %d (winner %d): %v", i, winner, err)
			}
		}

		cases := []struct {
			name   string
			userID string
			want   error
		}{
			{"enabled_already", "u1", token.ErrTOTPEnabled},
			{"unknown_user", "nobody", token.ErrNotFound},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				if err := o.EnableTOTP(ctx, tc.userID, []byte("other"), 5000, [][]byte{{9}}, at); !errors.Is(err, tc.want) {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
			})
		}
		if got, _ := o.UserByID(ctx, "u1"); !slices.Equal(got.TOTPSecret, []byte{byte(winner)}) {
			t.Fatalf("a refused enrolment changed the key: %x", got.TOTPSecret)
		}
		if left, _ := o.RecoveryCodesLeft(ctx, "u1"); left != 1 {
			t.Fatalf("a refused enrolment changed the recovery codes: %d left, want 1", left)
		}
		// After a reset the user can enrol again.
		if err := o.ResetTOTP(ctx, "u1", at); err != nil {
			t.Fatal(err)
		}
		if err := o.EnableTOTP(ctx, "u1", []byte("new"), 2000, nil, at); err != nil {
			t.Fatalf("enrol after reset: %v", err)
		}
	})
}

func TestOAuthCodesAndRefreshFamilies(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		o := db.OAuth()
		now := time.Unix(1_800_000_000, 0).UTC()
		g := &token.Grant{ID: "g1", ClientID: "c", UserID: "u", Scope: []string{"openid"}, AuthTime: now, AMR: []string{"pwd"}, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
		if err := o.AddGrant(ctx, g); err != nil {
			t.Fatal(err)
		}
		code := &token.AuthCode{Hash: []byte("h"), GrantID: "g1", ClientID: "c", UserID: "u", RedirectURI: "https://app/cb",
			Scope: []string{"openid"}, Challenge: "ch", AuthTime: now, CreatedAt: now, ExpiresAt: now.Add(time.Minute)}
		if err := o.AddCode(ctx, code); err != nil {
			t.Fatal(err)
		}
		want := token.CodeRedemption{ClientID: "c", RedirectURI: "https://app/cb", Challenge: "ch"}
		got, err := o.ConsumeCode(ctx, []byte("h"), want, now)
		if err != nil || got.GrantID != "g1" || got.RedirectURI != "https://app/cb" || got.Scope[0] != "openid" {
			t.Fatalf("%+v %v", got, err)
		}
		got, err = o.ConsumeCode(ctx, []byte("h"), want, now)
		if !errors.Is(err, token.ErrReused) || got == nil || got.GrantID != "g1" {
			t.Fatalf("reuse: %+v %v", got, err)
		}
		if _, err := o.ConsumeCode(ctx, []byte("unknown"), want, now); !errors.Is(err, token.ErrNotFound) {
			t.Fatalf("unknown: %v", err)
		}

		if err := o.RecordTokenID(ctx, "g1", "jti-1", now.Add(10*time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := o.RecordTokenID(ctx, "g1", "jti-old", now.Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
		r1 := &token.RefreshToken{Hash: []byte("r1"), GrantID: "g1", ClientID: "c", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
		if err := o.AddRefreshToken(ctx, r1); err != nil {
			t.Fatal(err)
		}
		// Concurrent rotations of one token: exactly one wins.
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = o.RotateRefreshToken(ctx, []byte("r1"), &token.RefreshToken{Hash: []byte{'n', byte(i)}, GrantID: "g1", ClientID: "c", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, now)
			}()
		}
		wg.Wait()
		wins := 0
		for _, err := range errs {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, token.ErrReused):
				t.Fatalf("rotation: %v", err)
			}
		}
		if wins != 1 {
			t.Fatalf("%d rotations won", wins)
		}
		revoked, err := o.RevokeGrant(ctx, "g1", now)
		if err != nil || len(revoked) != 1 || revoked[0].JTI != "jti-1" {
			t.Fatalf("revoke grant: %+v %v", revoked, err)
		}
		again, err := o.RevokeGrant(ctx, "g1", now)
		if err != nil || len(again) != 0 {
			t.Fatalf("second revoke: %+v %v", again, err)
		}
		if ok, _ := o.TokenIDRevoked(ctx, "jti-1"); !ok {
			t.Fatal("jti-1 not revoked")
		}
		gg, _ := o.Grant(ctx, "g1")
		if gg.RevokedAt.IsZero() {
			t.Fatal("grant not marked revoked")
		}
		list, _ := o.RevokedTokenIDs(ctx, now)
		if len(list) != 1 {
			t.Fatalf("%+v", list)
		}
		if err := o.Prune(ctx, now.Add(2*time.Hour)); err != nil {
			t.Fatal(err)
		}
		if list, _ := o.RevokedTokenIDs(ctx, now); len(list) != 0 {
			t.Fatalf("prune kept %+v", list)
		}
	})
}

func TestOAuthAssertionReplayAndKeys(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		o := db.OAuth()
		now := time.Unix(1_800_000_000, 0).UTC()
		if err := o.UseAssertionJTI(ctx, "c", "j", now); err != nil {
			t.Fatal(err)
		}
		if err := o.UseAssertionJTI(ctx, "c", "j", now); !errors.Is(err, token.ErrConflict) {
			t.Fatalf("replay: %v", err)
		}
		if err := o.UseAssertionJTI(ctx, "other", "j", now); err != nil {
			t.Fatalf("other client, same jti: %v", err)
		}
		k := &token.SigningKey{KID: "k1", Alg: "ES256", Sealed: []byte{1}, Public: []byte("{}"), CreatedAt: now, ActivateAt: now, RetireAt: now.Add(time.Hour), ExpireAt: now.Add(2 * time.Hour)}
		if err := o.AddSigningKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		if err := o.AddSigningKey(ctx, k); !errors.Is(err, token.ErrConflict) {
			t.Fatalf("dup kid: %v", err)
		}
		if n, _ := o.DeleteSigningKeys(ctx, now.Add(time.Hour)); n != 0 {
			t.Fatalf("deleted %d live keys", n)
		}
		if n, _ := o.DeleteSigningKeys(ctx, now.Add(3*time.Hour)); n != 1 {
			t.Fatalf("deleted %d", n)
		}
	})
}

func TestOAuthLoginThrottle(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		o := db.OAuth()
		now := time.Unix(1_800_000_000, 0).UTC()
		// Concurrent failures are all counted.
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := o.RecordLoginFailure(ctx, "k", now, now.Add(-time.Hour)); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		n, err := o.RecordLoginFailure(ctx, "k", now, now.Add(-time.Hour))
		if err != nil || n != 9 {
			t.Fatalf("count %d, %v", n, err)
		}
		if err := o.LockLogin(ctx, "k", now.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := o.LockLogin(ctx, "k", now.Add(time.Second)); err != nil { // never shortens
			t.Fatal(err)
		}
		until, err := o.LoginLockedUntil(ctx, []string{"other", "k"})
		if err != nil || !until.Equal(now.Add(time.Minute)) {
			t.Fatalf("locked until %v, %v", until, err)
		}
		// An idle counter starts again.
		later := now.Add(2 * time.Hour)
		if n, _ := o.RecordLoginFailure(ctx, "k", later, later.Add(-time.Hour)); n != 1 {
			t.Fatalf("after idle: %d", n)
		}
		if err := o.ClearLoginFailures(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		if until, _ := o.LoginLockedUntil(ctx, []string{"k"}); !until.IsZero() {
			t.Fatalf("cleared key still locked until %v", until)
		}
		o.RecordLoginFailure(ctx, "old", now, now.Add(-time.Hour))
		if err := o.Prune(ctx, now.Add(2*time.Hour)); err != nil {
			t.Fatal(err)
		}
		var rows int
		db.SQL().QueryRowContext(ctx, "SELECT COUNT(*) FROM oauth_login_throttle").Scan(&rows)
		if rows != 0 {
			t.Fatalf("prune kept %d idle counters", rows)
		}
	})
}

// Ending a user's sessions revokes exactly that user's grants, refresh
// tokens, unredeemed codes and unexpired access token IDs, in one go,
// and reports only the IDs it newly revoked.
func TestOAuthRevokeUserGrants(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		o := db.OAuth()
		now := time.Unix(1_800_000_000, 0).UTC()
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		grant := func(id, user string) {
			must(o.AddGrant(ctx, &token.Grant{ID: id, ClientID: "c", UserID: user, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}))
		}
		code := func(hash, grantID, user string) {
			must(o.AddCode(ctx, &token.AuthCode{Hash: []byte(hash), GrantID: grantID, ClientID: "c", UserID: user, RedirectURI: "https://app/cb",
				CreatedAt: now, ExpiresAt: now.Add(time.Minute)}))
		}
		codeFor := token.CodeRedemption{ClientID: "c", RedirectURI: "https://app/cb"}
		refresh := func(hash, grantID string) {
			must(o.AddRefreshToken(ctx, &token.RefreshToken{Hash: []byte(hash), GrantID: grantID, ClientID: "c", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}))
		}
		// alice: two live grants, one revoked earlier, a redeemed code
		// (kept for reuse detection) and an unredeemed one.
		grant("a1", "alice")
		grant("a2", "alice")
		grant("a-old", "alice")
		refresh("ra1", "a1")
		refresh("ra2", "a2")
		must(o.RecordTokenID(ctx, "a1", "jti-a1", now.Add(10*time.Minute)))
		must(o.RecordTokenID(ctx, "a2", "jti-a2", now.Add(5*time.Minute)))
		must(o.RecordTokenID(ctx, "a1", "jti-a1-expired", now.Add(-time.Minute)))
		must(o.RecordTokenID(ctx, "a-old", "jti-old", now.Add(10*time.Minute)))
		if _, err := o.RevokeGrant(ctx, "a-old", now); err != nil {
			t.Fatal(err)
		}
		code("ca-used", "a1", "alice")
		if _, err := o.ConsumeCode(ctx, []byte("ca-used"), codeFor, now); err != nil {
			t.Fatal(err)
		}
		code("ca-fresh", "a2", "alice")
		// bob must not be touched.
		grant("b1", "bob")
		refresh("rb1", "b1")
		must(o.RecordTokenID(ctx, "b1", "jti-b1", now.Add(10*time.Minute)))
		code("cb-fresh", "b1", "bob")

		later := now.Add(time.Second)
		n, toks, err := o.RevokeUserGrants(ctx, "alice", later)
		if err != nil {
			t.Fatal(err)
		}
		var jtis []string
		for _, tk := range toks {
			jtis = append(jtis, tk.JTI)
		}
		slices.Sort(jtis)
		if n != 2 || !slices.Equal(jtis, []string{"jti-a1", "jti-a2"}) {
			t.Fatalf("revoked %d grants, tokens %v; want 2 and [jti-a1 jti-a2]", n, jtis)
		}
		for _, tk := range toks {
			if tk.JTI == "jti-a1" && !tk.ExpiresAt.Equal(now.Add(10*time.Minute)) {
				t.Fatalf("jti-a1 expiry %v", tk.ExpiresAt)
			}
		}
		for _, id := range []string{"a1", "a2"} {
			if g, _ := o.Grant(ctx, id); !g.RevokedAt.Equal(later) {
				t.Errorf("grant %s revoked at %v", id, g.RevokedAt)
			}
		}
		if g, _ := o.Grant(ctx, "a-old"); !g.RevokedAt.Equal(now) {
			t.Errorf("earlier revocation time overwritten: %v", g.RevokedAt)
		}
		for _, h := range []string{"ra1", "ra2"} {
			if rt, _ := o.RefreshToken(ctx, []byte(h)); rt.RevokedAt.IsZero() {
				t.Errorf("refresh token %s not revoked", h)
			}
			if err := o.RotateRefreshToken(ctx, []byte(h), &token.RefreshToken{Hash: []byte("n" + h), GrantID: "a1", ClientID: "c", CreatedAt: later, ExpiresAt: now.Add(time.Hour)}, later); !errors.Is(err, token.ErrReused) {
				t.Errorf("rotating revoked %s: %v", h, err)
			}
		}
		for _, j := range []string{"jti-a1", "jti-a2", "jti-old"} {
			if ok, _ := o.TokenIDRevoked(ctx, j); !ok {
				t.Errorf("%s not on the revoked list", j)
			}
		}
		if ok, _ := o.TokenIDRevoked(ctx, "jti-a1-expired"); ok {
			t.Error("an expired token ID was listed")
		}
		if _, err := o.ConsumeCode(ctx, []byte("ca-fresh"), codeFor, later); !errors.Is(err, token.ErrNotFound) {
			t.Errorf("unredeemed code of the user still redeemable: %v", err)
		}
		if _, err := o.ConsumeCode(ctx, []byte("ca-used"), codeFor, later); !errors.Is(err, token.ErrReused) {
			t.Errorf("redeemed code no longer detects reuse: %v", err)
		}
		// bob is untouched.
		if g, _ := o.Grant(ctx, "b1"); !g.RevokedAt.IsZero() {
			t.Error("another user's grant revoked")
		}
		if rt, _ := o.RefreshToken(ctx, []byte("rb1")); !rt.RevokedAt.IsZero() {
			t.Error("another user's refresh token revoked")
		}
		if ok, _ := o.TokenIDRevoked(ctx, "jti-b1"); ok {
			t.Error("another user's access token revoked")
		}
		if _, err := o.ConsumeCode(ctx, []byte("cb-fresh"), codeFor, later); err != nil {
			t.Errorf("another user's code: %v", err)
		}
		// Again: nothing new; unknown user: nothing at all.
		for _, user := range []string{"alice", "nobody"} {
			if n, toks, err := o.RevokeUserGrants(ctx, user, later); err != nil || n != 0 || len(toks) != 0 {
				t.Errorf("%s: %d %v %v", user, n, toks, err)
			}
		}
	})
}

// A code presented with another client, redirect URI or PKCE challenge
// is neither consumed nor reported as reused, before or after its real
// redemption; a matching second presentation is reuse.
func TestOAuthConsumeCodeChecksBeforeConsuming(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		o := db.OAuth()
		now := time.Unix(1_800_000_000, 0).UTC()
		if err := o.AddCode(ctx, &token.AuthCode{Hash: []byte("h"), GrantID: "g", ClientID: "web", UserID: "u", RedirectURI: "https://app/cb",
			Challenge: "good-challenge", CreatedAt: now, ExpiresAt: now.Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		right := token.CodeRedemption{ClientID: "web", RedirectURI: "https://app/cb", Challenge: "good-challenge"}
		mismatches := []struct {
			name string
			want token.CodeRedemption
		}{
			{"another_client", token.CodeRedemption{ClientID: "evil", RedirectURI: right.RedirectURI, Challenge: right.Challenge}},
			{"another_redirect_uri", token.CodeRedemption{ClientID: right.ClientID, RedirectURI: "https://evil/cb", Challenge: right.Challenge}},
			{"another_challenge", token.CodeRedemption{ClientID: right.ClientID, RedirectURI: right.RedirectURI, Challenge: "guess"}},
			{"empty", token.CodeRedemption{}},
		}
		used := func() int64 {
			var v int64
			if err := db.SQL().QueryRowContext(ctx, "SELECT used_at FROM oauth_codes WHERE code_hash = $1", []byte("h")).Scan(&v); err != nil {
				t.Fatal(err)
			}
			return v
		}
		for _, phase := range []string{"before_redemption", "after_redemption"} {
			for _, tc := range mismatches {
				t.Run(phase+"/"+tc.name, func(t *testing.T) {
					before := used()
					got, err := o.ConsumeCode(ctx, []byte("h"), tc.want, now)
					if !errors.Is(err, token.ErrMismatch) || errors.Is(err, token.ErrReused) || got == nil || got.ClientID != "web" {
						t.Fatalf("got %+v, %v; want the record and ErrMismatch only", got, err)
					}
					if after := used(); after != before {
						t.Fatalf("a mismatching presentation changed used_at from %d to %d", before, after)
					}
				})
			}
			if phase == "before_redemption" {
				if _, err := o.ConsumeCode(ctx, []byte("h"), right, now); err != nil {
					t.Fatalf("the real redemption after mismatches: %v", err)
				}
			}
		}
		if _, err := o.ConsumeCode(ctx, []byte("h"), right, now); !errors.Is(err, token.ErrReused) {
			t.Fatalf("matching second redemption: %v, want ErrReused", err)
		}
	})
}

// An admin's password change works on a user read before an MFA
// enrolment completed, and an mfa-start on a user read before another
// enrolment completed: neither may switch the new TOTP off or replace its
// key (issue 11 item 17). UpdateUser writes no TOTP column; StartTOTP
// only changes a user whose TOTP is off.
func TestOAuthTOTPSurvivesStaleUserWrites(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		o := db.OAuth()
		at := time.Unix(1_800_000_000, 0).UTC()
		enrolled := func(t *testing.T, id string, key []byte) {
			t.Helper()
			u, err := o.UserByID(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if !u.TOTPEnabled || !slices.Equal(u.TOTPSecret, key) {
				t.Fatalf("TOTP enabled %v key %q, want on with %q", u.TOTPEnabled, u.TOTPSecret, key)
			}
		}
		for i := range 20 {
			id := fmt.Sprintf("u%d", i)
			if err := o.CreateUser(ctx, &token.User{ID: id, Name: "user" + id, PasswordHash: "$argon2id$old", CreatedAt: at, UpdatedAt: at}); err != nil {
				t.Fatal(err)
			}
			if err := o.StartTOTP(ctx, id, []byte("pending"), at); err != nil {
				t.Fatal(err)
			}
			stale, err := o.UserByID(ctx, id) // the admin's read: TOTP pending, off
			if err != nil {
				t.Fatal(err)
			}
			// The password change and the enrolment race; either order
			// leaves TOTP on with the enrolled key and the new password.
			var wg sync.WaitGroup
			wg.Add(2)
			go func() {
				defer wg.Done()
				stale.PasswordHash = "$argon2id$new"
				if err := o.UpdateUser(ctx, stale); err != nil {
					t.Error(err)
				}
			}()
			go func() {
				defer wg.Done()
				if err := o.EnableTOTP(ctx, id, []byte("pending"), 10, [][]byte{{1}}, at); err != nil {
					t.Error(err)
				}
			}()
			wg.Wait()
			enrolled(t, id, []byte("pending"))
			if u, _ := o.UserByID(ctx, id); u.PasswordHash != "$argon2id$new" {
				t.Fatalf("password %q, want the new one", u.PasswordHash)
			}
			// An mfa-start that read the user before the enrolment
			// completed must not overwrite the key just enabled.
			if err := o.StartTOTP(ctx, id, []byte("late"), at); !errors.Is(err, token.ErrTOTPEnabled) {
				t.Fatalf("StartTOTP on an enabled user: %v, want ErrTOTPEnabled", err)
			}
			enrolled(t, id, []byte("pending"))
		}
		if err := o.ResetTOTP(ctx, "u0", at); err != nil {
			t.Fatal(err)
		}
		if u, _ := o.UserByID(ctx, "u0"); u.TOTPEnabled || u.TOTPSecret != nil {
			t.Fatalf("after ResetTOTP: %+v", u)
		}
		if n, _ := o.RecoveryCodesLeft(ctx, "u0"); n != 0 {
			t.Fatalf("recovery codes survive the reset: %d", n)
		}
		if err := o.ResetTOTP(ctx, "nobody", at); !errors.Is(err, token.ErrNotFound) {
			t.Fatalf("ResetTOTP of an unknown user: %v", err)
		}
	})
}
