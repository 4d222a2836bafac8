package server

import (
	"testing"
	"time"
)

// last_seen is written once per node per touchInterval, whichever of the
// node's streams asks, and never for a node with no stream open here.
func TestHubTouchDue(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 5, 0, 0, 0, time.UTC)
	type step struct {
		op   string // connect, disconnect, touch
		id   string
		at   time.Duration
		want bool // for touch
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"first_stream_touches", []step{{"connect", "a", 0, false}, {"touch", "a", 0, true}}},
		{"second_stream_within_interval_does_not", []step{
			{"connect", "a", 0, false}, {"touch", "a", 0, true},
			{"connect", "a", time.Second, false}, {"touch", "a", time.Second, false},
			{"touch", "a", touchInterval - 1, false}, {"touch", "a", touchInterval, true}, {"touch", "a", touchInterval, false}}},
		{"nodes_are_independent", []step{
			{"connect", "a", 0, false}, {"connect", "b", 0, false},
			{"touch", "a", 0, true}, {"touch", "b", 0, true}}},
		{"not_connected_no_touch", []step{{"touch", "a", 0, false}}},
		{"after_the_last_stream_left", []step{
			{"connect", "a", 0, false}, {"touch", "a", 0, true}, {"disconnect", "a", 0, false}, {"touch", "a", touchInterval, false},
			// A new stream is a new connection: it records it at once.
			{"connect", "a", time.Second, false}, {"touch", "a", time.Second, true}}},
		{"one_of_two_streams_left", []step{
			{"connect", "a", 0, false}, {"connect", "a", 0, false}, {"touch", "a", 0, true},
			{"disconnect", "a", 0, false}, {"touch", "a", touchInterval, true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h hub
			for i, s := range tt.steps {
				switch s.op {
				case "connect":
					h.connect(s.id, 1)
				case "disconnect":
					h.connect(s.id, -1)
				case "touch":
					if got := h.touchDue(s.id, t0.Add(s.at)); got != s.want {
						t.Fatalf("step %d (%s %s at %s): touchDue %v, want %v", i, s.op, s.id, s.at, got, s.want)
					}
				}
			}
		})
	}
}
