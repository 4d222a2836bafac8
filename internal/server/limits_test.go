package server

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestFailLimiter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := newFailLimiter(10, 3)
	tests := []struct {
		name string
		at   time.Duration
		want bool
	}{
		{"burst_1", 0, true},
		{"burst_2", 0, true},
		{"burst_3", 0, true},
		{"burst_spent", 0, false},
		{"not_yet_refilled", 50 * time.Millisecond, false},
		{"one_token_after_100ms", 100 * time.Millisecond, true},
		{"spent_again", 100 * time.Millisecond, false},
		{"refills_to_burst_only", time.Hour, true},
		{"burst_left_2", time.Hour, true},
		{"burst_left_3", time.Hour, true},
		{"capped", time.Hour, false},
	}
	for _, tc := range tests {
		if got := l.allow(t0.Add(tc.at)); got != tc.want {
			t.Fatalf("%s: allow = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestKeyedLimiter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := newKeyedLimiter(10, 500, 2)
	tests := []struct {
		name     string
		key      string
		at       time.Duration
		n        float64
		want     bool
		wantWait time.Duration
	}{
		{"full_report_fits_a_new_key", "a", 0, 500, true, 0},
		{"spent", "a", 0, 1, false, 100 * time.Millisecond},
		{"other_key_has_its_own_budget", "b", 0, 300, true, 0},
		{"third_key_refused_while_both_in_use", "c", 0, 1, false, 100 * time.Millisecond},
		{"partial_refill_not_enough", "a", time.Second, 20, false, time.Second},
		{"partial_refill_enough", "a", time.Second, 10, true, 0},
		{"more_than_burst_never_fits", "b", time.Hour, 501, false, 0},
		{"refilled_keys_are_swept_for_a_new_one", "c", time.Hour, 500, true, 0},
		{"swept_key_starts_full_again", "a", time.Hour, 1, true, 0},
		{"no_full_bucket_to_sweep", "d", time.Hour, 1, false, 100 * time.Millisecond},
	}
	for _, tc := range tests {
		ok, wait := l.take(tc.key, t0.Add(tc.at), tc.n)
		if ok != tc.want || wait != tc.wantWait {
			t.Fatalf("%s: take = %v, %v; want %v, %v", tc.name, ok, wait, tc.want, tc.wantWait)
		}
	}
}

// TestCheckAssignableIgnoresCase: the server's ID, the admin IDs and the
// /moatless segment are reserved in any letter case; a segment that only
// starts with "moatless" is not.
func TestCheckAssignableIgnoresCase(t *testing.T) {
	s := fuzzServer()
	s.admins["spiffe://example.org/ops/root"] = true
	for _, tc := range []struct {
		id       string
		reserved bool
	}{
		{"spiffe://example.org/moatless/server", true},
		{"spiffe://example.org/Moatless/Server", true},
		{"spiffe://example.org/MOATLESS", true},
		{"spiffe://example.org/mOaTlEsS/anything/below", true},
		{"spiffe://example.org/ops/root", true},
		{"spiffe://example.org/OPS/Root", true},
		{"spiffe://example.org/ops/root/child", false},
		{"spiffe://example.org/moatlessly/x", false},
		{"spiffe://example.org/ns/moatless/sa/x", false},
	} {
		err := s.checkAssignable("spiffe_id", spiffeid.RequireFromString(tc.id))
		if (err != nil) != tc.reserved {
			t.Errorf("%s: err %v, want reserved %v", tc.id, err, tc.reserved)
		}
	}
}
