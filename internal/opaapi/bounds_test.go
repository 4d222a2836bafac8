//go:build !norego

package opaapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/opaapi/opaclient"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/wire"
)

// TestEvaluationBounded is the attack of a caller of the Data API (any
// local process, on a sidecar's or moatless authz's loopback admin
// listener) who hands a policy an input that makes it loop: every
// evaluation ends at the handler's bound with OPA's 500, and evaluations
// beyond the concurrency bound wait for a slot within that bound, so
// callers cannot take every CPU from the decisions the process serves.
// OPA's server has no such bound; the decision path has one (a
// RegoProvider's timeout), and the Data API evaluates the same modules.
func TestEvaluationBounded(t *testing.T) {
	r, err := policy.CompileRego([]wire.RegoModule{{ID: "loop.rego", Source: "package loop\nimport rego.v1\nspin if {\n\tsome i in numbers.range(1, input.n)\n\tsome j in numbers.range(1, input.n)\n\ti + j < 0\n}\nok := true\n"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	(&Handler{Rego: func() *policy.Rego { return r }, EvalTimeout: 100 * time.Millisecond, MaxEvals: 1, Logger: quietLog()}).Register(mux, LoopbackOnly)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	// A client deadline far past the bound: without the bound the query
	// runs for hours and the client gives up, failing the test.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opa := &opaclient.Client{Base: srv.URL}

	done := make(chan error, 3)
	for range 3 {
		go func() {
			_, _, err := opa.Query(ctx, "loop/spin", map[string]any{"n": 100000})
			done <- err
		}()
	}
	evaluated := 0
	for range 3 {
		err := <-done
		var oe *opaclient.Error
		if !errors.As(err, &oe) || (oe.Status != 500 && oe.Status != 503) || !strings.Contains(oe.Message, "bound") {
			t.Fatalf("looping query: %v, want 500 or 503 naming the bound", err)
		}
		if oe.Status == 500 {
			evaluated++
		}
	}
	if evaluated == 0 {
		t.Fatal("no looping query was evaluated and cut off")
	}
	// The bound cancels only what exceeds it.
	if v, ok, err := opa.Get(ctx, "loop/ok"); err != nil || !ok || v != true {
		t.Fatalf("after the looping queries: %v %v %v", v, ok, err)
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
