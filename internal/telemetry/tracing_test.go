package telemetry_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/telemetry/otlptest"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseTracingConfig(t *testing.T) {
	tests := []struct {
		name     string
		env      map[string]string
		enabled  bool
		protocol string
		sampler  string
		err      string // a substring of the error, "" for none
	}{
		{name: "nothing_set_is_off", env: nil, protocol: telemetry.ProtocolHTTP, sampler: "parentbased_always_on"},
		{name: "endpoint_turns_it_on", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, enabled: true,
			protocol: telemetry.ProtocolHTTP, sampler: "parentbased_always_on"},
		{name: "traces_endpoint_turns_it_on", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/v1/traces"}, enabled: true,
			protocol: telemetry.ProtocolHTTP, sampler: "parentbased_always_on"},
		{name: "exporter_otlp", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, enabled: true,
			protocol: telemetry.ProtocolGRPC, sampler: "parentbased_always_on"},
		{name: "traces_protocol_wins", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
			"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, enabled: true, protocol: telemetry.ProtocolHTTP, sampler: "parentbased_always_on"},
		{name: "exporter_none_wins", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"},
			protocol: telemetry.ProtocolHTTP},
		{name: "sdk_disabled_wins", env: map[string]string{"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"}, protocol: telemetry.ProtocolHTTP},
		{name: "ratio", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
			"OTEL_TRACES_SAMPLER_ARG": "0.25"}, enabled: true, protocol: telemetry.ProtocolHTTP, sampler: "parentbased_traceidratio=0.25"},
		{name: "ratio_without_arg_is_one", env: map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio"}, protocol: telemetry.ProtocolHTTP,
			sampler: "traceidratio=1"},
		{name: "always_off", env: map[string]string{"OTEL_TRACES_SAMPLER": "always_off"}, protocol: telemetry.ProtocolHTTP, sampler: "always_off"},
		{name: "bad_exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "jaeger"}, err: "OTEL_TRACES_EXPORTER"},
		{name: "bad_protocol", env: map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, err: "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{name: "bad_sampler", env: map[string]string{"OTEL_TRACES_SAMPLER": "sometimes"}, err: "OTEL_TRACES_SAMPLER"},
		{name: "ratio_above_one", env: map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, err: "OTEL_TRACES_SAMPLER_ARG"},
		{name: "ratio_not_a_number", env: map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, err: "OTEL_TRACES_SAMPLER_ARG"},
		{name: "ratio_nan", env: map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "NaN"}, err: "OTEL_TRACES_SAMPLER_ARG"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := telemetry.ParseTracingConfig(env(tt.env))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want one naming %s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Enabled != tt.enabled || c.Protocol != tt.protocol || c.SamplerName != tt.sampler {
				t.Fatalf("got enabled=%v protocol=%q sampler=%q, want %v %q %q", c.Enabled, c.Protocol, c.SamplerName, tt.enabled, tt.protocol, tt.sampler)
			}
		})
	}
}

func FuzzParseTracingConfig(f *testing.F) {
	f.Add("otlp", "grpc", "parentbased_traceidratio", "0.5")
	f.Add("", "http/protobuf", "always_on", "")
	f.Add("none", "", "traceidratio", "2")
	f.Fuzz(func(t *testing.T, exp, proto, sampler, arg string) {
		c, err := telemetry.ParseTracingConfig(env(map[string]string{"OTEL_TRACES_EXPORTER": exp, "OTEL_EXPORTER_OTLP_PROTOCOL": proto,
			"OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": arg}))
		if err == nil && c.Enabled && c.Sampler == nil {
			t.Fatal("enabled without a sampler")
		}
		if err == nil && c.Protocol != telemetry.ProtocolGRPC && c.Protocol != telemetry.ProtocolHTTP {
			t.Fatalf("protocol %q", c.Protocol)
		}
	})
}

// TestExportsToARealReceiver sends spans through the real OTLP exporters,
// over each protocol, to a receiver on loopback, and checks what arrived.
func TestExportsToARealReceiver(t *testing.T) {
	rcv := otlptest.Start(t)
	for _, tt := range []struct {
		name, protocol, endpoint string
	}{
		{"grpc", telemetry.ProtocolGRPC, rcv.GRPCEndpoint},
		{"http_protobuf", telemetry.ProtocolHTTP, rcv.HTTPEndpoint},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", tt.endpoint)
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", tt.protocol)
			t.Setenv("OTEL_SERVICE_NAME", "")
			t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
			c, err := telemetry.ParseTracingConfig(func(k string) string {
				return map[string]string{
					"OTEL_EXPORTER_OTLP_ENDPOINT": tt.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": tt.protocol}[k]
			})
			if err != nil || !c.Enabled {
				t.Fatalf("config %+v %v", c, err)
			}
			ctx := context.Background()
			tr, err := telemetry.StartTracing(ctx, c, "moatless-test", slog.New(slog.NewTextHandler(io.Discard, nil)),
				attribute.String("moatless.role", "test"))
			if err != nil {
				t.Fatal(err)
			}
			ctx, parent := tr.Tracer("test").Start(ctx, "parent-"+tt.name)
			_, child := tr.Tracer("test").Start(ctx, "child-"+tt.name, trace.WithAttributes(attribute.String("moatless.decision", "allow")))
			child.End()
			parent.End()
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := tr.Shutdown(sctx); err != nil {
				t.Fatal(err)
			}
			spans := rcv.Wait(t, 10*time.Second, func(s []otlptest.Span) bool { return find(s, "child-"+tt.name) != nil })
			p, ch := find(spans, "parent-"+tt.name), find(spans, "child-"+tt.name)
			if p == nil || ch.TraceID != p.TraceID || ch.ParentSpanID != p.SpanID || p.ParentSpanID != "" {
				t.Fatalf("parent %+v child %+v", p, ch)
			}
			if ch.Attrs["moatless.decision"] != "allow" || ch.Service != "moatless-test" || ch.Resource["moatless.role"] != "test" ||
				ch.Resource["deployment.environment.name"] != "test" {
				t.Fatalf("child span %+v", ch)
			}
		})
	}
}

func TestOffHandsOutNoopTracers(t *testing.T) {
	tr, err := telemetry.StartTracing(context.Background(), telemetry.TracingConfig{}, "x", slog.Default())
	if err != nil || tr.Enabled() {
		t.Fatalf("%v %v", tr.Enabled(), err)
	}
	_, s := tr.Tracer("x").Start(context.Background(), "s")
	if s.SpanContext().IsValid() || s.IsRecording() {
		t.Fatal("a span from tracing that is off records")
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func find(spans []otlptest.Span, name string) *otlptest.Span {
	for i := range spans {
		if spans[i].Name == name {
			return &spans[i]
		}
	}
	return nil
}
