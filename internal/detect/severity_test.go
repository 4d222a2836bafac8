package detect

import (
	"slices"
	"testing"
)

func TestSeverityAtLeast(t *testing.T) {
	tests := []struct {
		name string
		sev  Severity
		want []string
	}{
		{name: "low", sev: Low, want: []string{"low", "medium", "high", "critical"}},
		{name: "medium", sev: Medium, want: []string{"medium", "high", "critical"}},
		{name: "high", sev: High, want: []string{"high", "critical"}},
		{name: "critical", sev: Critical, want: []string{"critical"}},
		{name: "unknown", sev: "extreme"},
		{name: "empty", sev: ""},
		{name: "case_matters", sev: "HIGH"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.sev.AtLeast(); !slices.Equal(got, tt.want) {
				t.Fatalf("%q.AtLeast() = %v, want %v", tt.sev, got, tt.want)
			}
		})
	}
}
