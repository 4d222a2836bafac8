// Package telemetry sets up OpenTelemetry tracing for the server, the
// sidecar and the agent from the standard OTEL_* environment variables,
// exporting spans over OTLP (gRPC or HTTP/protobuf).
//
// Tracing is off unless asked for: OTEL_TRACES_EXPORTER=otlp, or an OTLP
// endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set. OTEL_SDK_DISABLED=true or
// OTEL_TRACES_EXPORTER=none turn it off whatever else is set. The
// exporter reads the rest of its settings (headers, TLS files, timeout,
// compression) from the standard variables itself; the sampler is parsed
// here, strictly, so a typo is an error at startup rather than a silent
// fallback.
//
// Security: spans carry identities, decisions and policy names, never a
// credential. Callers must not put header values, query strings, tokens
// or secrets in attributes; the exporter's own headers (an API key for a
// vendor's collector, say) come from the environment and are never
// logged.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Protocols of the OTLP exporter (OTEL_EXPORTER_OTLP_PROTOCOL).
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// TracingConfig is what the OTEL_* variables say about tracing.
type TracingConfig struct {
	// Enabled: spans are exported.
	Enabled bool
	// Protocol is ProtocolGRPC or ProtocolHTTP (the default, as the
	// OpenTelemetry specification says).
	Protocol string
	// Sampler decides which traces are recorded; default parent-based
	// always-on (a trace the caller sampled is sampled, a new one is).
	Sampler sdktrace.Sampler
	// SamplerName is the sampler as configured, for the startup log.
	SamplerName string
}

// ParseTracingConfig reads the tracing settings from getenv. Errors name
// the variable.
func ParseTracingConfig(getenv func(string) string) (TracingConfig, error) {
	c := TracingConfig{Protocol: ProtocolHTTP}
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return c, nil
	}
	switch exp := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); exp {
	case "none":
		return c, nil
	case "otlp":
		c.Enabled = true
	case "":
		c.Enabled = getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
	default:
		return c, fmt.Errorf("telemetry: OTEL_TRACES_EXPORTER %q: want otlp or none (moatless exports traces over OTLP only)", exp)
	}
	p := strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
	name := "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	if p == "" {
		p, name = strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_PROTOCOL")), "OTEL_EXPORTER_OTLP_PROTOCOL"
	}
	switch p {
	case "", ProtocolHTTP:
	case ProtocolGRPC:
		c.Protocol = ProtocolGRPC
	default:
		return c, fmt.Errorf("telemetry: %s %q: want grpc or http/protobuf", name, p)
	}
	var err error
	c.Sampler, c.SamplerName, err = parseSampler(strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER")), strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER_ARG")))
	return c, err
}

// parseSampler is the specification's OTEL_TRACES_SAMPLER set (without
// the Jaeger remote samplers).
func parseSampler(name, arg string) (sdktrace.Sampler, string, error) {
	ratio := func() (float64, error) {
		if arg == "" {
			return 1, nil
		}
		f, err := strconv.ParseFloat(arg, 64)
		if err != nil || !(f >= 0 && f <= 1) { // NaN fails both
			return 0, fmt.Errorf("telemetry: OTEL_TRACES_SAMPLER_ARG %q: want a ratio from 0 to 1", arg)
		}
		return f, nil
	}
	switch name {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), "parentbased_always_on", nil
	case "always_on":
		return sdktrace.AlwaysSample(), name, nil
	case "always_off":
		return sdktrace.NeverSample(), name, nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), name, nil
	case "traceidratio", "parentbased_traceidratio":
		f, err := ratio()
		if err != nil {
			return nil, "", err
		}
		s := sdktrace.TraceIDRatioBased(f)
		if name == "parentbased_traceidratio" {
			s = sdktrace.ParentBased(s)
		}
		return s, name + "=" + strconv.FormatFloat(f, 'g', -1, 64), nil
	default:
		return nil, "", fmt.Errorf("telemetry: OTEL_TRACES_SAMPLER %q: want always_on, always_off, traceidratio, "+
			"parentbased_always_on, parentbased_always_off or parentbased_traceidratio", name)
	}
}

// Tracing is a running tracer provider. The zero value (tracing off)
// hands out no-op tracers.
type Tracing struct {
	tp *sdktrace.TracerProvider
}

// Tracer returns a tracer named for the instrumenting package; a no-op
// one when tracing is off.
func (t *Tracing) Tracer(name string) trace.Tracer {
	if t == nil || t.tp == nil {
		return noop.NewTracerProvider().Tracer(name)
	}
	return t.tp.Tracer(name)
}

// Enabled reports whether spans are exported.
func (t *Tracing) Enabled() bool { return t != nil && t.tp != nil }

// ForceFlush exports the spans ended so far without stopping the
// exporter; ctx bounds how long it waits.
func (t *Tracing) ForceFlush(ctx context.Context) error {
	if t == nil || t.tp == nil {
		return nil
	}
	return t.tp.ForceFlush(ctx)
}

// Shutdown flushes the spans still queued and stops the exporter; ctx
// bounds how long it waits. Idempotent.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil || t.tp == nil {
		return nil
	}
	return t.tp.Shutdown(ctx)
}

// Propagator is the W3C trace context (traceparent, tracestate), the only
// context moatless reads from and writes into requests. Baggage is not
// read: it is free-form data from the caller, and nothing here needs it.
var Propagator propagation.TextMapPropagator = propagation.TraceContext{}

// StartTracing starts exporting spans as c says, for service (the
// default service.name; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
// override). With tracing off it returns a zero Tracing. Export errors go
// to log. The exporter connects lazily: a collector that is down costs
// dropped spans and a log line, never a failed request.
func StartTracing(ctx context.Context, c TracingConfig, service string, log *slog.Logger, attrs ...attribute.KeyValue) (*Tracing, error) {
	if !c.Enabled {
		return &Tracing{}, nil
	}
	var (
		exp sdktrace.SpanExporter
		err error
	)
	switch c.Protocol {
	case ProtocolGRPC:
		exp, err = otlptracegrpc.New(ctx)
	default:
		exp, err = otlptracehttp.New(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTLP exporter: %w", err)
	}
	res, err := resource.Merge(resource.NewSchemaless(append([]attribute.KeyValue{attribute.String("service.name", service)}, attrs...)...),
		mustEnvResource(ctx))
	if err != nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	sampler := c.Sampler
	if sampler == nil {
		sampler = sdktrace.ParentBased(sdktrace.AlwaysSample())
	}
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing: export failed", "err", err)
	}))
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res), sdktrace.WithSampler(sampler))
	log.Info("tracing on", "protocol", c.Protocol, "sampler", c.SamplerName)
	return &Tracing{tp: tp}, nil
}

// mustEnvResource is the resource OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES describe (empty when they say nothing or
// cannot be parsed; the SDK reports a malformed one to the error handler).
func mustEnvResource(ctx context.Context) *resource.Resource {
	r, err := resource.New(ctx, resource.WithFromEnv())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return resource.Empty()
	}
	return r
}
