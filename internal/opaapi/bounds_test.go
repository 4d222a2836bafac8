//go:build !norego

package opaapi

import (
	"context"
	"errors"
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

// TestLoopbackOnlyRebinding is the attack of a web page the host's
// browser opens: its name re-resolved to 127.0.0.1 (DNS rebinding), the
// browser reaches the loopback listener from a loopback address, with the
// page's name as Host, and the page reads the answers as its own origin's
// (every module and data document, decisions on any input). A loopback
// caller is admitted only under a loopback Host, as geth's --http.vhosts
// and Jupyter's allow_remote_access do.
func TestLoopbackOnlyRebinding(t *testing.T) {
	mux := http.NewServeMux()
	(&Handler{Rego: func() *policy.Rego { return nil }}).Register(mux, LoopbackOnly)
	cases := []struct {
		name, remote, host string
		status             int
	}{
		{"loopback_ip_host", "127.0.0.1:4000", "127.0.0.1:15000", 200},
		{"loopback_ipv6_host", "[::1]:4000", "[::1]:15000", 200},
		{"localhost_host", "127.0.0.1:4000", "localhost:15000", 200},
		{"localhost_any_case_no_port", "127.0.0.1:4000", "LocalHost", 200},
		{"no_host_http10", "127.0.0.1:4000", "", 200},
		{"rebound_name", "127.0.0.1:4000", "evil.example:15000", 403},
		{"rebound_name_no_port", "127.0.0.1:4000", "evil.example", 403},
		{"localhost_lookalike", "127.0.0.1:4000", "localhost.evil.example:15000", 403},
		{"non_loopback_ip_host", "127.0.0.1:4000", "192.0.2.1:15000", 403},
		{"remote_caller", "192.0.2.7:4000", "127.0.0.1:15000", 403},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/v1/data", nil)
			req.RemoteAddr, req.Host = c.remote, c.host
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, req)
			if rec.Code != c.status {
				t.Fatalf("status %d %s, want %d", rec.Code, rec.Body, c.status)
			}
		})
	}
}
