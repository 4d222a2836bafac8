package dataplane

import (
	"context"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/telemetry"
)

// tracerName is the instrumentation scope of every moatless span.
const tracerName = "github.com/moatless/moatless"

// startTracing starts OpenTelemetry tracing as the OTEL_* variables say
// (docs/tracing.md), for a process whose default service.name is
// service. stop flushes the spans still queued (for up to 5 seconds) and
// is safe to call when tracing is off. A malformed variable is an error
// for the user to fix.
func (e *Env) StartTracing(ctx context.Context, log *slog.Logger, service string) (*telemetry.Tracing, func(), error) {
	c, err := telemetry.ParseTracingConfig(e.Env)
	if err != nil {
		return nil, func() {}, err
	}
	t, err := telemetry.StartTracing(ctx, c, service, log, attribute.String("moatless.role", service))
	if err != nil {
		return nil, func() {}, err
	}
	return t, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := t.Shutdown(sctx); err != nil {
			log.Warn("tracing: spans still queued at exit were dropped", "err", err)
		}
	}, nil
}

// tracer is startTracing for a component that takes a trace.Tracer: nil
// when tracing is off (the component then builds no span at all).
func (e *Env) Tracer(ctx context.Context, log *slog.Logger, service string) (trace.Tracer, func(), error) {
	t, stop, err := e.StartTracing(ctx, log, service)
	if err != nil || !t.Enabled() {
		return nil, stop, err
	}
	return t.Tracer(tracerName), stop, nil
}
