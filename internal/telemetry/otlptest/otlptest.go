// Package otlptest is a real OTLP trace receiver for tests: the
// collector's gRPC TraceService and the HTTP/protobuf endpoint, built on
// the official OTLP protobuf packages and served on 127.0.0.1. What the
// exporters send is decoded exactly as a collector decodes it.
package otlptest

import (
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Span is a received span, flattened for assertions.
type Span struct {
	Name         string
	TraceID      string // hex
	SpanID       string // hex
	ParentSpanID string // hex, "" for a root
	Kind         tracepb.Span_SpanKind
	Attrs        map[string]string // every value as text (an array as "[a b]")
	Service      string            // the resource's service.name
	Resource     map[string]string
	StatusCode   tracepb.Status_StatusCode
	// Links are the linked spans as "TRACEID-SPANID" (hex).
	Links []string
}

// Receiver collects the spans sent to it. Safe for concurrent use.
type Receiver struct {
	coltracepb.UnimplementedTraceServiceServer
	// GRPCEndpoint is "http://127.0.0.1:PORT" of the gRPC receiver,
	// HTTPEndpoint the base URL of the HTTP one (spans go to
	// HTTPEndpoint+"/v1/traces").
	GRPCEndpoint, HTTPEndpoint string

	mu    sync.Mutex
	spans []Span
	wake  chan struct{}
}

// Start runs both receivers until the test ends.
func Start(t testing.TB) *Receiver {
	t.Helper()
	r := &Receiver{wake: make(chan struct{}, 1)}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(gs, r)
	go gs.Serve(gl)
	r.GRPCEndpoint = "http://" + gl.Addr().String()

	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", r.serveHTTP)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(hl)
	r.HTTPEndpoint = "http://" + hl.Addr().String()
	t.Cleanup(func() {
		gs.Stop()
		hs.Close()
	})
	return r
}

// Export is the gRPC TraceService.
func (r *Receiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	r.add(req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (r *Receiver) serveHTTP(w http.ResponseWriter, hr *http.Request) {
	if hr.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "want application/x-protobuf", http.StatusUnsupportedMediaType)
		return
	}
	b, err := io.ReadAll(io.LimitReader(hr.Body, 16<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.add(&req)
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

func (r *Receiver) add(req *coltracepb.ExportTraceServiceRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		res := attrMap(rs.GetResource().GetAttributes())
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				sp := Span{Name: s.GetName(), TraceID: hex.EncodeToString(s.GetTraceId()), SpanID: hex.EncodeToString(s.GetSpanId()),
					Kind: s.GetKind(), Attrs: attrMap(s.GetAttributes()), Service: res["service.name"], Resource: res,
					StatusCode: s.GetStatus().GetCode()}
				for _, l := range s.GetLinks() {
					sp.Links = append(sp.Links, hex.EncodeToString(l.GetTraceId())+"-"+hex.EncodeToString(l.GetSpanId()))
				}
				if len(s.GetParentSpanId()) > 0 {
					sp.ParentSpanID = hex.EncodeToString(s.GetParentSpanId())
				}
				r.spans = append(r.spans, sp)
			}
		}
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func attrMap(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		v := kv.GetValue()
		switch x := v.GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			m[kv.GetKey()] = x.StringValue
		default:
			m[kv.GetKey()] = anyText(v)
		}
	}
	return m
}

func anyText(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_IntValue:
		return itoa(x.IntValue)
	case *commonpb.AnyValue_BoolValue:
		if x.BoolValue {
			return "true"
		}
		return "false"
	case *commonpb.AnyValue_DoubleValue:
		return ftoa(x.DoubleValue)
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_ArrayValue:
		// As fmt prints a slice: "[a b]".
		parts := make([]string, len(x.ArrayValue.GetValues()))
		for i, e := range x.ArrayValue.GetValues() {
			parts[i] = anyText(e)
		}
		return "[" + strings.Join(parts, " ") + "]"
	default:
		b, _ := proto.Marshal(v)
		return hex.EncodeToString(b)
	}
}

// Spans returns every span received so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// Wait polls until match accepts the spans received (or the deadline
// passes) and returns them.
func (r *Receiver) Wait(t testing.TB, d time.Duration, match func([]Span) bool) []Span {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		s := r.Spans()
		if match(s) {
			return s
		}
		select {
		case <-r.wake:
		case <-deadline.C:
			t.Fatalf("spans received in %s did not match; got %d:\n%v", d, len(s), s)
			return nil
		}
	}
}

func itoa(i int64) string   { return strconv.FormatInt(i, 10) }
func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// WaitFlushing is Wait for spans that end after the client got its
// answer (a server may end its span after writing the response): until
// match accepts what was received, it calls every flush (a Tracing's
// ForceFlush) and waits for an export or a short tick, so a span ended a
// moment late is still sent — a Shutdown right after the last response
// would drop it.
func (r *Receiver) WaitFlushing(t testing.TB, d time.Duration, match func([]Span) bool, flush ...func(context.Context) error) []Span {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, f := range flush {
			f(ctx)
		}
		s := r.Spans()
		if match(s) {
			return s
		}
		select {
		case <-r.wake:
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("spans received in %s did not match; got %d:\n%v", d, len(s), s)
			return nil
		}
	}
}
