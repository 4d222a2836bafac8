package dataplane

import (
	"runtime/debug"
	"testing"
)

func TestSidecarGCDefaultYieldsToGOGC(t *testing.T) {
	tests := []struct {
		name string
		gogc string
		want int
	}{
		{"unset_takes_the_sidecar_default", "", sidecarGCPercent},
		{"set_is_left_to_the_runtime", "200", 100},
		{"off_is_left_to_the_runtime", "off", 100},
	}
	prev := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(prev) })
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			debug.SetGCPercent(100) // what the runtime applied from the environment
			sidecarGC(tc.gogc)
			if got := debug.SetGCPercent(100); got != tc.want {
				t.Fatalf("GC percent %d, want %d", got, tc.want)
			}
		})
	}
}
