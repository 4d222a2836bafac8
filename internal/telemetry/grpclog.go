package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc/grpclog"
)

// grpcTarget is the logger RouteGRPCLogs set; nil means slog.Default().
var grpcTarget atomic.Pointer[slog.Logger]

// grpclog.SetLoggerV2 writes an unguarded global that gRPC reads from its
// own goroutines, so it is set once, here, before any gRPC code runs;
// RouteGRPCLogs only swaps the target, atomically.
func init() {
	v, _ := strconv.Atoi(os.Getenv("GRPC_GO_LOG_VERBOSITY_LEVEL"))
	grpclog.SetLoggerV2(grpcLogger{verbosity: v})
}

// RouteGRPCLogs sends what gRPC itself logs (grpclog: connection
// failures, transport errors, resolver and balancer changes) to l, so
// that it is part of the role's structured log instead of plain-text lines
// on stderr. It is process-wide: the last call wins (the demo runs several
// roles in one process and they share it).
//
// Levels: gRPC's errors and warnings are logged at Error and Warn; its
// info lines (every connectivity change, every connection a port scanner
// opens and drops) at Debug, so an info-level log shows none of that
// noise. Each line carries logger=grpc and, when gRPC names one, its
// component (grpc_component=core, transport, ...). gRPC's verbose lines
// (V(n) for n > 0) are off unless GRPC_GO_LOG_VERBOSITY_LEVEL is set, as
// in gRPC.
func RouteGRPCLogs(l *slog.Logger) { grpcTarget.Store(l) }

// grpcLogger is grpclog.LoggerV2 over slog.
type grpcLogger struct{ verbosity int }

func (g grpcLogger) log(level slog.Level, msg string) {
	l := grpcTarget.Load()
	if l == nil {
		l = slog.Default()
	}
	ctx := context.Background()
	if !l.Enabled(ctx, level) {
		return
	}
	msg = strings.TrimSuffix(msg, "\n")
	attrs := []any{"logger", "grpc"}
	// gRPC's component loggers prefix "[core] ", "[transport] ", ...
	if rest, ok := strings.CutPrefix(msg, "["); ok {
		if comp, after, ok := strings.Cut(rest, "] "); ok && comp != "" && !strings.ContainsAny(comp, " []") {
			attrs = append(attrs, "grpc_component", comp)
			msg = after
		}
	}
	l.Log(ctx, level, msg, attrs...)
}

func (g grpcLogger) Info(args ...any)   { g.log(slog.LevelDebug, fmt.Sprint(args...)) }
func (g grpcLogger) Infoln(args ...any) { g.log(slog.LevelDebug, fmt.Sprintln(args...)) }
func (g grpcLogger) Infof(format string, args ...any) {
	g.log(slog.LevelDebug, fmt.Sprintf(format, args...))
}
func (g grpcLogger) Warning(args ...any)   { g.log(slog.LevelWarn, fmt.Sprint(args...)) }
func (g grpcLogger) Warningln(args ...any) { g.log(slog.LevelWarn, fmt.Sprintln(args...)) }
func (g grpcLogger) Warningf(format string, args ...any) {
	g.log(slog.LevelWarn, fmt.Sprintf(format, args...))
}
func (g grpcLogger) Error(args ...any)   { g.log(slog.LevelError, fmt.Sprint(args...)) }
func (g grpcLogger) Errorln(args ...any) { g.log(slog.LevelError, fmt.Sprintln(args...)) }
func (g grpcLogger) Errorf(format string, args ...any) {
	g.log(slog.LevelError, fmt.Sprintf(format, args...))
}

// Fatal logs at Error and exits with status 1, as grpclog's contract says.
func (g grpcLogger) Fatal(args ...any)   { g.log(slog.LevelError, fmt.Sprint(args...)); os.Exit(1) }
func (g grpcLogger) Fatalln(args ...any) { g.log(slog.LevelError, fmt.Sprintln(args...)); os.Exit(1) }
func (g grpcLogger) Fatalf(format string, args ...any) {
	g.log(slog.LevelError, fmt.Sprintf(format, args...))
	os.Exit(1)
}

// V reports whether verbose lines of level v are wanted (gRPC's own rule:
// v at most GRPC_GO_LOG_VERBOSITY_LEVEL, 0 by default).
func (g grpcLogger) V(v int) bool { return v <= g.verbosity }
