package ui

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestSealedCookies(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	s, err := newSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	good, err := s.seal(sessionCookie, &session{Purpose: "session", ID: "abc", Expires: now.Add(time.Minute).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := newSealer(bytes.Repeat([]byte{8}, 32))
	otherKey, _ := other.seal(sessionCookie, &session{Purpose: "session", ID: "abc", Expires: now.Add(time.Minute).Unix()})
	noID, _ := s.seal(sessionCookie, &session{Purpose: "session", Expires: now.Add(time.Minute).Unix()})
	tests := []struct {
		name, cookie, purpose, value string
		at                           time.Time
		wantErr                      error
	}{
		{name: "opens", cookie: sessionCookie, purpose: "session", value: good, at: now},
		{name: "expired", cookie: sessionCookie, purpose: "session", value: good, at: now.Add(time.Minute), wantErr: errSessionExpired},
		{name: "moved_to_another_cookie", cookie: oidcStateCookie, purpose: "session", value: good, at: now, wantErr: errBadCookie},
		{name: "other_purpose", cookie: sessionCookie, purpose: "oidc", value: good, at: now, wantErr: errBadCookie},
		{name: "other_key", cookie: sessionCookie, purpose: "session", value: otherKey, at: now, wantErr: errBadCookie},
		{name: "no_id", cookie: sessionCookie, purpose: "session", value: noID, at: now, wantErr: errBadCookie},
		{name: "truncated", cookie: sessionCookie, purpose: "session", value: good[:len(good)-2], at: now, wantErr: errBadCookie},
		{name: "too_long", cookie: sessionCookie, purpose: "session", value: strings.Repeat("A", maxCookieLen+1), at: now, wantErr: errBadCookie},
		{name: "not_base64", cookie: sessionCookie, purpose: "session", value: "!!!", at: now, wantErr: errBadCookie},
		{name: "empty", cookie: sessionCookie, purpose: "session", value: "", at: now, wantErr: errBadCookie},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := s.open(tt.cookie, tt.purpose, tt.value, tt.at)
			if err != tt.wantErr {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if err == nil && v.ID != "abc" {
				t.Fatalf("opened %+v", v)
			}
		})
	}
	if _, err := newSealer(key[:16]); err == nil {
		t.Fatal("a 16-byte key was accepted")
	}
}

// FuzzOpenCookie: whatever a browser sends as a cookie, open never panics,
// fails only with errBadCookie (or an expiry) and never accepts a value it
// did not seal.
func FuzzOpenCookie(f *testing.F) {
	s, _ := newSealer(bytes.Repeat([]byte{7}, 32))
	good, _ := s.seal(sessionCookie, &session{Purpose: "session", ID: "abc", Expires: 1 << 40})
	f.Add(good)
	f.Add("")
	f.Add(strings.Repeat("A", 60))
	f.Add("eyJwIjoic2Vzc2lvbiJ9")
	f.Fuzz(func(t *testing.T, v string) {
		// Only a value sealed under the key opens (the seed; each fuzz
		// worker seals its own with a fresh nonce, so compare contents).
		got, err := s.open(sessionCookie, "session", v, time.Unix(0, 0))
		if err == nil && (got.ID != "abc" || got.Purpose != "session") {
			t.Fatalf("opened a value it did not seal: %q -> %+v", v, got)
		}
		if err != nil && err != errBadCookie && err != errSessionExpired {
			t.Fatalf("error %v is neither errBadCookie nor an expiry", err)
		}
	})
}
