package policy

import (
	"strings"
	"testing"
)

func TestEditDistance(t *testing.T) {
	long := strings.Repeat("a", 65)
	for _, tt := range []struct {
		name      string
		a, b      string
		lev, edit int
	}{
		{"equal", "principals", "principals", 0, 0},
		{"one_substitution", "principal", "principel", 1, 1},
		{"insertion_and_deletion", "namespaces", "namespace", 1, 1},
		{"empty", "", "abc", 3, 3},
		{"guarded_past_64_bytes", long, long + "b", 1, 1 << 20},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := Levenshtein(tt.a, tt.b); got != tt.lev {
				t.Errorf("Levenshtein = %d, want %d", got, tt.lev)
			}
			if got := EditDistance(tt.a, tt.b); got != tt.edit {
				t.Errorf("EditDistance = %d, want %d", got, tt.edit)
			}
		})
	}
}
