package ui

import (
	"slices"
	"testing"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/detect"
)

func TestIncidentSteps(t *testing.T) {
	rec := func(seq uint64, kind, action string) audit.Record {
		r := audit.Record{Seq: seq}
		r.Kind = kind
		if action != "" {
			r.Details = map[string]string{"action": action}
		}
		return r
	}
	steps := func(actions ...string) []detect.StepResult {
		out := make([]detect.StepResult, len(actions))
		for i, a := range actions {
			out[i].Action = a
		}
		return out
	}
	tests := []struct {
		name  string
		steps []detect.StepResult
		recs  []audit.Record // newest first, as the source gives them
		want  [][]uint64     // the seqs of each step's records
	}{
		{name: "isolate_then_release",
			steps: steps("quarantine", "isolate", "release"),
			recs: []audit.Record{rec(9, "incident.release", ""), rec(8, "incident.step", "release"), rec(7, "revocation.delete", ""),
				rec(5, "incident.step", "isolate"), rec(4, "revocation.create", ""), rec(2, "incident.step", "quarantine"), rec(1, "incident.open", "")},
			want: [][]uint64{{2}, {4, 5}, {7, 8, 9}}},
		{name: "block_confirmed",
			steps: steps("block-pair", "confirm"),
			recs:  []audit.Record{rec(3, "incident.confirm", ""), rec(2, "incident.step", "block-pair")},
			want:  [][]uint64{{2}, {3}}},
		{name: "the_same_action_twice",
			steps: steps("isolate", "isolate"),
			recs:  []audit.Record{rec(4, "incident.step", "isolate"), rec(2, "incident.step", "isolate"), rec(1, "revocation.create", "")},
			want:  [][]uint64{{1, 2}, {4}}},
		{name: "older_records_not_searched",
			steps: steps("notify", "isolate"),
			recs:  []audit.Record{rec(5, "incident.step", "isolate"), rec(4, "revocation.create", "")},
			want:  [][]uint64{nil, {4, 5}}},
		{name: "no_records", steps: steps("isolate"), want: [][]uint64{nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := incidentSteps(tt.steps, tt.recs)
			if len(got) != len(tt.want) {
				t.Fatalf("%d steps, want %d", len(got), len(tt.want))
			}
			for i, sv := range got {
				var seqs []uint64
				for _, r := range sv.Records {
					seqs = append(seqs, r.Seq)
				}
				if !slices.Equal(seqs, tt.want[i]) {
					t.Errorf("step %d (%s): records %v, want %v", i, sv.Action, seqs, tt.want[i])
				}
			}
		})
	}
}
