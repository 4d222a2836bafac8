package server

import (
	"testing"
	"time"
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
