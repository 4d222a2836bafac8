package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/cli/dataplane"
	"github.com/moatless/moatless/internal/policy"
)

// logLines parses every line of a JSON log, failing on a line that is
// not a JSON object.
func logLines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("log line is not JSON: %q", l)
		}
		out = append(out, m)
	}
	return out
}

// TestLogValues: durations are duration strings, never integer
// nanoseconds; lists are JSON arrays; nested groups too.
func TestLogValues(t *testing.T) {
	var buf bytes.Buffer
	log, err := dataplane.NewLogger(&buf, "json", "info")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("x", "retry_in", 1500*time.Millisecond, "ips", []string{"127.0.0.1", "::1"},
		"g", map[string]any{"n": 1})
	log.WithGroup("grp").Info("y", "ttl", time.Hour)
	lines := logLines(t, buf.Bytes())
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"duration_is_a_string", lines[0]["retry_in"], "1.5s"},
		{"list_is_an_array", lines[0]["ips"], []any{"127.0.0.1", "::1"}},
		{"duration_in_a_group_is_a_string", lines[1]["grp"].(map[string]any)["ttl"], "1h0m0s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := json.Marshal(tc.got)
			w, _ := json.Marshal(tc.want)
			if !bytes.Equal(g, w) {
				t.Fatalf("got %s, want %s", g, w)
			}
		})
	}
}

// TestLogLifecycle: a signal gives "shutting down" with its cause, then
// "stopped"; an error gives "stopped" at ERROR with the error; a clean end
// without a signal gives "stopped" alone.
func TestLogLifecycle(t *testing.T) {
	tests := []struct {
		name       string
		cancel     bool
		err        error
		wantMsgs   []string
		wantFailed bool
		wantLevel  string
	}{
		{"signal_then_clean_stop", true, context.Canceled, []string{"shutting down", "stopped"}, false, "INFO"},
		{"signal_then_error", true, errors.New("drain failed"), []string{"shutting down", "stopped"}, true, "ERROR"},
		{"error_without_signal", false, errors.New("listen: address in use"), []string{"stopped"}, true, "ERROR"},
		{"clean_end_without_signal", false, nil, []string{"stopped"}, false, "INFO"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log, _ := dataplane.NewLogger(&buf, "json", "info")
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			stopped := dataplane.LogLifecycle(ctx, log)
			if tc.cancel {
				cancel(errors.New("terminated signal received"))
			}
			if got := stopped(tc.err); got != tc.wantFailed {
				t.Fatalf("failed=%v, want %v", got, tc.wantFailed)
			}
			lines := logLines(t, buf.Bytes())
			var msgs []string
			for _, l := range lines {
				msgs = append(msgs, l["msg"].(string))
			}
			if strings.Join(msgs, "|") != strings.Join(tc.wantMsgs, "|") {
				t.Fatalf("messages %q, want %q", msgs, tc.wantMsgs)
			}
			if tc.cancel && lines[0]["cause"] != "terminated signal received" {
				t.Fatalf("cause %v", lines[0]["cause"])
			}
			last := lines[len(lines)-1]
			if last["level"] != tc.wantLevel || (tc.wantFailed && last["err"] != tc.err.Error()) {
				t.Fatalf("last line %v", last)
			}
		})
	}
}

// TestAuthzLogsAFailedReloadOncePerChange: "moatless authz" logged a
// broken policy file on every reload tick; now once per change.
func TestAuthzLogsAFailedReloadOncePerChange(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "p.yaml")
	doc := func(mode string) string {
		return "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: prod}\nspec: {mtls: {mode: " + mode + "}}\n"
	}
	write := func(s string) {
		if err := os.WriteFile(pol, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(doc("STRICT"))
	var buf bytes.Buffer
	log, _ := dataplane.NewLogger(&buf, "json", "info")
	verifier := authn.NewVerifier(authn.Options{Logger: log})
	defer verifier.Close()
	p := &filePolicy{e: &Env{}, files: []string{dir}, log: log, verifier: verifier, dst: policy.Destination{Namespace: "prod"}}
	ctx := context.Background()
	if err := p.load(ctx, true); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		content   string
		ticks     int
		wantLines int
	}{
		{"broken_file_logged_once_over_many_ticks", doc("SOMETIMES"), 10, 1},
		{"other_breakage_logged_again", doc("NEVER"), 10, 1},
		{"repaired", doc("PERMISSIVE"), 3, 0},
		{"same_breakage_after_repair_logged_again", doc("NEVER"), 5, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			write(tc.content)
			buf.Reset()
			ticks := make(chan time.Time)
			done := make(chan struct{})
			go func() { p.watch(ctx, ticks); close(done) }()
			for range tc.ticks {
				ticks <- time.Time{}
			}
			close(ticks)
			<-done
			if got := strings.Count(buf.String(), "policy reload failed"); got != tc.wantLines {
				t.Fatalf("%d failure lines, want %d:\n%s", got, tc.wantLines, buf.String())
			}
		})
	}
}
