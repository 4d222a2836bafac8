package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// historyVersions reads the VERSION column of "policy history" text output.
func historyVersions(out string) []uint64 {
	var vs []uint64
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseUint(f[0], 10, 64); err == nil {
			vs = append(vs, v)
		}
	}
	return vs
}

// TestPolicyHistoryPaging: --before pages through the versions newest
// first, the text output names the --before of the next page while there
// is one, and bad values are usage errors.
func TestPolicyHistoryPaging(t *testing.T) {
	env, dir := startAdminServer(t)
	pf := filepath.Join(dir, "p.yaml")
	for i := 1; i <= 5; i++ { // policy versions 1 to 5
		doc := fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: ns%d}\nspec: {mtls: {mode: STRICT}}\n", i)
		if err := os.WriteFile(pf, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if code, out, errOut := runCLI(t, env, "policy", "apply", "-f", pf); code != ExitOK {
			t.Fatalf("policy apply %d: %d %q %q", i, code, out, errOut)
		}
	}

	tests := []struct {
		name     string
		args     []string
		want     []uint64
		wantNext string // the hint line, "" for none
	}{
		{"first_page", []string{"--limit", "2"}, []uint64{5, 4}, "(older: moatless policy history --before 4)"},
		{"second_page", []string{"--limit", "2", "--before", "4"}, []uint64{3, 2}, "(older: moatless policy history --before 2)"},
		{"last_page_short", []string{"--limit", "2", "--before", "2"}, []uint64{1}, ""},
		{"full_page_ending_at_version_1", []string{"--limit", "3", "--before", "4"}, []uint64{3, 2, 1}, ""},
		{"everything", []string{"--limit", "10"}, []uint64{5, 4, 3, 2, 1}, ""},
		{"before_past_the_end", []string{"--before", "100"}, []uint64{5, 4, 3, 2, 1}, ""},
		{"before_1_is_empty", []string{"--before", "1"}, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, env, append([]string{"policy", "history"}, tc.args...)...)
			if code != ExitOK {
				t.Fatalf("exit %d, stderr %q", code, errOut)
			}
			if got := historyVersions(out); !slices.Equal(got, tc.want) {
				t.Fatalf("versions %v, want %v\n%s", got, tc.want, out)
			}
			hint := ""
			if i := strings.Index(out, "(older:"); i >= 0 {
				hint = strings.TrimSpace(out[i:])
			}
			if hint != tc.wantNext {
				t.Fatalf("hint %q, want %q", hint, tc.wantNext)
			}
		})
	}

	t.Run("json_is_the_page", func(t *testing.T) {
		code, out, errOut := runCLI(t, env, "policy", "history", "--before", "3", "-o", "json")
		var page struct {
			Items []struct {
				Version uint64 `json:"version"`
			} `json:"items"`
			Next *uint64 `json:"next"`
		}
		if code != ExitOK || json.Unmarshal([]byte(out), &page) != nil {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		hist := page.Items
		if len(hist) != 2 || hist[0].Version != 2 || hist[1].Version != 1 || page.Next != nil {
			t.Fatalf("got %+v, want versions 2 and 1 and no next page", page)
		}
	})

	bad := []struct {
		name string
		args []string
		want string
	}{
		{"before_negative", []string{"--before", "-1"}, `invalid value "-1" for flag -before`},
		{"before_not_a_number", []string{"--before", "v3"}, `invalid value "v3" for flag -before`},
		{"before_above_int64", []string{"--before", "9223372036854775808"}, "is not a policy version"},
		{"limit_zero", []string{"--limit", "0"}, "--limit must be 1 to 1000"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, env, append([]string{"policy", "history"}, tc.args...)...)
			if code != ExitUsage || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d mentioning %q", code, out, errOut, ExitUsage, tc.want)
			}
		})
	}
}
