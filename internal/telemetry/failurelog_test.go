package telemetry_test

import (
	"errors"
	"testing"

	"github.com/moatless/moatless/internal/telemetry"
)

// TestFailureLog: a failure is reported when it begins and when its error
// changes, not while it repeats; a success after failures is reported
// once; operations are tracked apart.
func TestFailureLog(t *testing.T) {
	var f telemetry.FailureLog
	errA, errB := errors.New("a"), errors.New("b")
	steps := []struct {
		name string
		what string
		err  error
		want bool
	}{
		{"success_first_is_no_recovery", "tls", nil, false},
		{"first_failure", "tls", errA, true},
		{"same_failure_again", "tls", errA, false},
		{"same_text_other_value", "tls", errors.New("a"), false},
		{"other_operation_apart", "config", errA, true},
		{"different_failure", "tls", errB, true},
		{"recovery", "tls", nil, true},
		{"second_success", "tls", nil, false},
		{"same_failure_after_recovery", "tls", errB, true},
		{"other_still_failing", "config", errA, false},
	}
	for _, s := range steps {
		var got bool
		if s.err != nil {
			got = f.Failed(s.what, s.err)
		} else {
			got = f.Worked(s.what)
		}
		if got != s.want {
			t.Fatalf("%s: got %v, want %v", s.name, got, s.want)
		}
	}
}
