package gateway

import (
	"bytes"
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"
)

// slogLine is the line log/slog's JSONHandler writes for e: the access
// log's format before it was composed by hand, and the one it keeps.
func slogLine(t testing.TB, e *accessEntry) string {
	var buf bytes.Buffer
	attrs := []slog.Attr{
		slog.String("request_id", e.requestID),
		slog.String("client", e.client),
		slog.String("method", e.method),
		slog.String("host", e.host),
		slog.String("path", e.path),
		slog.String("proto", e.proto),
		slog.String("route", e.route),
		slog.Int("status", e.status),
		slog.Int64("bytes", e.bytes),
		slog.Int64("request_bytes", e.requestBytes),
		slog.Float64("duration_ms", float64(e.duration.Microseconds())/1000),
		slog.String("identity", e.identity),
	}
	if e.blockReason != "" {
		attrs = append(attrs, slog.String("block_reason", e.blockReason))
	}
	if e.detail != "" {
		attrs = append(attrs, slog.String("detail", e.detail))
	}
	rec := slog.NewRecord(e.time, slog.LevelInfo, "access", 0)
	rec.AddAttrs(attrs...)
	if err := slog.NewJSONHandler(&buf, nil).Handle(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestAccessLineIsSlogs(t *testing.T) {
	base := accessEntry{
		time:      time.Date(2026, 12, 6, 20, 45, 1, 234567891, time.UTC),
		requestID: "5f0c6d8e2a7b4c1d9e3f0a1b2c3d4e5f", client: "198.51.100.7", method: "POST",
		host: "api.example.com", path: "/orders", proto: "HTTP/1.1", route: "orders",
		status: 200, bytes: 6, requestBytes: 12, duration: 1234567 * time.Nanosecond, identity: "spiffe://moatless.local/ns/prod/sa/web",
	}
	tests := []struct {
		name string
		edit func(e *accessEntry)
	}{
		{"plain", func(*accessEntry) {}},
		{"blocked_with_detail", func(e *accessEntry) { e.status, e.blockReason, e.detail = 403, "waf", "rules 942100,949110" }},
		{"quote_and_backslash_in_path", func(e *accessEntry) { e.path = `/a"b\c` }},
		{"forged_field_in_host", func(e *accessEntry) { e.host = `x","status":200,"y":"` }},
		{"newline_and_controls", func(e *accessEntry) { e.path = "/a\nb\r\tc\x00\x1f\x7f" }},
		{"html_characters", func(e *accessEntry) { e.path = "/<script>&amp;" }},
		{"invalid_utf8", func(e *accessEntry) { e.path = "/a\xffb\xc3" }},
		{"line_separators", func(e *accessEntry) { e.path = "/a\u2028b\u2029c" }},
		{"unicode", func(e *accessEntry) { e.path = "/zürich/東京/😀" }},
		{"empty_fields", func(e *accessEntry) { e.client, e.route, e.identity = "", "", "" }},
		{"no_answer", func(e *accessEntry) { e.status, e.bytes, e.duration = 499, 0, 0 }},
		{"long_duration", func(e *accessEntry) { e.duration = 90 * time.Second }},
		{"other_zone", func(e *accessEntry) { e.time = e.time.In(time.FixedZone("", 5*3600+1800)) }},
		{"whole_millisecond", func(e *accessEntry) { e.time = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := base
			tt.edit(&e)
			if got, want := string(appendAccess(nil, &e)), slogLine(t, &e); got != want {
				t.Fatalf("line\n got %s\nwant %s", got, want)
			}
		})
	}
}

// FuzzAccessLine: whatever a client puts in the fields it controls, the
// line is the one slog would write (one line, every value quoted).
func FuzzAccessLine(f *testing.F) {
	for _, s := range []string{"/orders", "a\"b", "\n", "\xff", "\u2028", "<&>", "東京", "\x00\x7f"} {
		f.Add(s, s, int64(1234567))
	}
	f.Fuzz(func(t *testing.T, path, host string, dur int64) {
		e := accessEntry{
			time: time.Unix(1765053901, 123456789).UTC(), requestID: "id", client: "192.0.2.1", method: "GET",
			host: host, path: path, proto: "HTTP/1.1", route: "r", status: 200, duration: time.Duration(dur),
			detail: host,
		}
		if got, want := string(appendAccess(nil, &e)), slogLine(t, &e); got != want {
			t.Fatalf("line\n got %s\nwant %s", got, want)
		}
	})
}

func TestStatusClass(t *testing.T) {
	// The table must spell every status as the formula it replaced did:
	// the metrics' labels are an interface dashboards depend on.
	for _, tc := range []struct {
		name   string
		status int
	}{
		{"ok", 200},
		{"informational", 100},
		{"redirect", 308},
		{"client_gone", 499},
		{"upstream_unavailable", 503},
		{"largest_three_digit", 999},
		{"four_digits", 1000},
		{"zero", 0},
		{"negative", -5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, want := statusClass(tc.status), strconv.Itoa(tc.status/100)+"xx"; got != want {
				t.Fatalf("statusClass(%d) = %q, want %q", tc.status, got, want)
			}
		})
	}
}
