package telemetry_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"testing"

	"google.golang.org/grpc/grpclog"

	"github.com/moatless/moatless/internal/telemetry"
)

// TestGRPCLogLevels: gRPC's lines, written through grpclog as gRPC's own
// packages write them, land in the routed slog logger at the mapped level
// with gRPC's component split out; info lines only at debug.
func TestGRPCLogLevels(t *testing.T) {
	comp := grpclog.Component("transport")
	tests := []struct {
		name      string
		level     slog.Level // of the routed logger
		log       func()
		wantLevel string // "" when nothing is logged
		wantMsg   string
		wantComp  string
	}{
		{"info_hidden_at_info", slog.LevelInfo, func() { comp.Infof("closing: %v", "EOF") }, "", "", ""},
		{"info_shown_at_debug", slog.LevelDebug, func() { comp.Infof("closing: %v", "EOF") }, "DEBUG", "closing: EOF", "transport"},
		{"warning", slog.LevelInfo, func() { comp.Warningf("keepalive %d", 3) }, "WARN", "keepalive 3", "transport"},
		{"error", slog.LevelInfo, func() { comp.Error("bad frame") }, "ERROR", "bad frame", "transport"},
		{"error_hidden_at_a_higher_level", slog.LevelError + 4, func() { comp.Error("bad frame") }, "", "", ""},
		{"no_component", slog.LevelInfo, func() { grpclog.Warningf("plain %s", "line") }, "WARN", "plain line", ""},
		{"bracket_text_is_not_a_component", slog.LevelInfo, func() { grpclog.Warning("[a b] c") }, "WARN", "[a b] c", ""},
	}
	defer telemetry.RouteGRPCLogs(nil)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			telemetry.RouteGRPCLogs(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: tc.level})))
			tc.log()
			telemetry.RouteGRPCLogs(slog.New(slog.DiscardHandler))
			if tc.wantLevel == "" {
				if buf.Len() != 0 {
					t.Fatalf("logged %s", buf.Bytes())
				}
				return
			}
			var rec map[string]any
			if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
				t.Fatalf("not one JSON line: %q", buf.Bytes())
			}
			comp, _ := rec["grpc_component"].(string)
			if rec["level"] != tc.wantLevel || rec["msg"] != tc.wantMsg || rec["logger"] != "grpc" || comp != tc.wantComp {
				t.Fatalf("got %v", rec)
			}
		})
	}
}
