package ca

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// A replica that finds in the store a state it cannot adopt reports it
// (Diverged) until the store holds one it can: a state of a newer
// version (an upgrade in progress), one sealed with another KEK, or an
// older state written back.
func TestDivergedUntilTheStoredStateCanBeAdopted(t *testing.T) {
	m := &memStore{}
	a := newEnv(t, func(o *Options) { o.State = &swapStore{memStore: m} })
	ctx := context.Background()
	b := a.reopen(t)
	if _, _, err := b.Prepare(ctx, KindX509); err != nil {
		t.Fatal(err)
	}
	good, _ := m.snapshot()
	plain, err := unseal(testKEK, good)
	if err != nil {
		t.Fatal(err)
	}
	newer := bytes.Replace(plain, []byte(`{"version":1,`), []byte(`{"version":1,"future":true,`), 1)
	newerBlob, err := seal(testKEK, newer)
	if err != nil {
		t.Fatal(err)
	}
	otherKEK, err := seal(bytes.Repeat([]byte{7}, KEKSize), plain)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		blob []byte
		want string
	}{
		{"newer_version", newerBlob, "future"},
		{"other_kek", otherKEK, "unseal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m.mu.Lock()
			m.blob = tc.blob
			m.mu.Unlock()
			if _, err := a.ca.Tick(ctx); err == nil {
				t.Fatal("Tick adopted a state it cannot read")
			}
			if err := a.ca.Diverged(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Diverged: %v, want an error about %q", err, tc.want)
			}
			m.mu.Lock()
			m.blob = good
			m.mu.Unlock()
			if _, err := a.ca.Tick(ctx); err != nil {
				t.Fatal(err)
			}
			if err := a.ca.Diverged(); err != nil {
				t.Fatalf("Diverged after adopting the good state: %v", err)
			}
		})
	}
}
