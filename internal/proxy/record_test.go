package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// reports collects what a Recorder sends.
type reports struct {
	mu   sync.Mutex
	got  []*wire.RecordReport
	fail error
}

func (r *reports) send(_ context.Context, rep *wire.RecordReport) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.got = append(r.got, rep)
	return nil
}

// edges flushes rec and returns every edge sent so far, keyed
// "direction source destination method path decision/reason status".
func (r *reports) edges(t *testing.T, rec *Recorder) map[string]wire.EdgeRecord {
	t.Helper()
	if err := rec.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]wire.EdgeRecord{}
	for _, rep := range r.got {
		for _, e := range rep.Edges {
			k := fmt.Sprintf("%s %s %s %s %s %s/%s %d", e.Direction, e.Source, e.Destination, e.Method, e.Path, e.Decision, e.Reason, e.Status)
			prev := out[k]
			e.Requests += prev.Requests
			e.RespBytes += prev.RespBytes
			if p := prev.PII; p != nil {
				// Scanned bodies are reported in the flush after their
				// scan: sum them over the reports too.
				sum := *p
				if e.PII != nil {
					sum.Sampled += e.PII.Sampled
					sum.Bytes += e.PII.Bytes
					sum.Cards += e.PII.Cards
					sum.Emails += e.PII.Emails
					sum.NationalIDs += e.PII.NationalIDs
				}
				e.PII = &sum
			}
			out[k] = e
		}
	}
	return out
}

func newTestRecorder(t *testing.T, r *reports, cfg RecorderConfig) *Recorder {
	t.Helper()
	cfg.Send = r.send
	cfg.Logger = discardLogger()
	rec, err := NewRecorder(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestRecorderCountsEveryOutcome runs on both server paths, with
// HTTP/1.1 between the sidecars: detection must see every request,
// whichever path served it.
func TestRecorderCountsEveryOutcome(t *testing.T) {
	forServerPaths(t, testRecorderCountsEveryOutcome)
}

func testRecorderCountsEveryOutcome(t *testing.T, sp serverPath) {
	app := echoApp(t)
	ca := testpki.NewCA(t, "example.org")
	var in, out reports
	inRec := newTestRecorder(t, &in, RecorderConfig{Namespace: "prod", Ports: []int{8080}})
	outRec := newTestRecorder(t, &out, RecorderConfig{})
	inL := listen(t)
	inAddr := inL.Addr().String()
	server := startSidecar(t, Config{
		Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
		Inbound:              []Inbound{{Name: "in", Listener: inL, App: app, Port: 8080}},
		Authorizer:           allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
		Recorder:             inRec,
		DisableHTTP1FastPath: sp.disable,
	})
	outL := listen(t)
	startSidecar(t, Config{
		Identity:             newStaticIdentity(ca, ca.SVID(t, frontendID, 0)),
		Outbound:             []Outbound{{Name: "out", Listener: outL, Upstream: inAddr, ID: spiffeid.RequireFromString(ordersID), HTTP1: true}},
		Recorder:             outRec,
		DisableHTTP1FastPath: sp.disable,
	})
	c := &http.Client{}
	base := "http://" + outL.Addr().String()
	for _, p := range []string{"/api/orders/42", "/api/orders/43", "/api/orders/44?token=secret"} {
		if code, _ := get(t, c, "GET", base+p); code != 200 {
			t.Fatalf("GET %s: %d", p, code)
		}
	}
	if code, _ := get(t, c, "DELETE", base+"/api/orders/42"); code != 403 {
		t.Fatalf("DELETE: %d", code)
	}
	// A plaintext connection refused by STRICT, before any request.
	if resp, err := c.Get("http://" + inAddr + "/"); err == nil {
		resp.Body.Close()
	}
	// The edge of a revoked caller: its handshakes are refused and
	// recorded against its identity.
	server.SetRevocations(&wire.Revocations{SPIFFEIDs: []string{frontendID}})

	// The call that finds its pooled connection closed may fail without a
	// new handshake, and the client may see a refused handshake before
	// the server's goroutine has counted it: call until it is counted.
	revokedKey := "inbound " + frontendID + "    refused/revoked 0"
	ins := in.edges(t, inRec)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); ins = in.edges(t, inRec) {
		if _, ok := ins[revokedKey]; ok {
			break
		}
		get(t, c, "GET", base+"/api/orders/45")
		time.Sleep(10 * time.Millisecond)
	}
	want := map[string]uint64{
		"inbound " + frontendID + "  GET /api/orders/{*} allow/ 2":            3,
		"inbound " + frontendID + "  DELETE /api/orders/{*} deny/deny_rule 4": 1,
		"inbound     refused/mtls_required 0":                                 1,
		"inbound " + frontendID + "    refused/revoked 0":                     1,
	}
	for k, n := range want {
		e, ok := ins[k]
		if !ok {
			t.Errorf("no inbound edge %q; have %v", k, keys(ins))
			continue
		}
		if e.Requests < n || (k != "inbound "+frontendID+"    refused/revoked 0" && e.Requests != n) {
			t.Errorf("edge %q: %d requests, want %d", k, e.Requests, n)
		}
	}
	if e := ins["inbound "+frontendID+"  GET /api/orders/{*} allow/ 2"]; e.RespBytes == 0 || e.LatencyMaxMicros == 0 || e.Port != 8080 {
		t.Errorf("allowed edge lacks bytes, latency or port: %+v", e)
	}
	for k := range ins {
		if contains(k, "secret") || contains(k, "?") {
			t.Errorf("a query string reached a record: %q", k)
		}
	}
	outs := out.edges(t, outRec)
	if e, ok := outs["outbound  "+ordersID+" GET /api/orders/{*} allow/ 2"]; !ok || e.Requests != 3 {
		t.Errorf("outbound allowed edge: %+v (have %v)", e, keys(outs))
	}
	if _, ok := outs["outbound  "+ordersID+" DELETE /api/orders/{*} allow/ 4"]; !ok {
		t.Errorf("outbound edge of the denied call missing; have %v", keys(outs))
	}
	// Every refusal was sampled.
	in.mu.Lock()
	defer in.mu.Unlock()
	var denies int
	for _, rep := range in.got {
		if rep.Namespace != "prod" || len(rep.Ports) != 1 || rep.Component != "sidecar" {
			t.Errorf("report describes its workload as %q %v %q", rep.Namespace, rep.Ports, rep.Component)
		}
		for _, s := range rep.Samples {
			if s.Decision == "deny" {
				denies++
			}
		}
	}
	if denies == 0 {
		t.Error("the deny was not sampled")
	}
}

func keys(m map[string]wire.EdgeRecord) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestRecorderPIISampling: responses to an opted-in edge are scanned for
// personal data, on both server paths (HTTP/1.1 between the sidecars, so
// the fast path serves them when on) and whether the app's answer has a
// Content-Length, is chunked, or spans several reads; other edges are not.
func TestRecorderPIISampling(t *testing.T) { forServerPaths(t, testRecorderPIISampling) }

func testRecorderPIISampling(t *testing.T, sp serverPath) {
	const doc = `[{"email":"alice@example.com","pan":"4111 1111 1111 1111"},{"email":"bob@example.org","ssn":"123-45-6789"}]`
	var server atomic.Pointer[Sidecar]
	var fastMiss atomic.Int64 // requests the inbound fast path did not serve
	l := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s := server.Load(); s != nil && fastServing(s) == 0 {
			fastMiss.Add(1)
		}
		switch r.URL.Path {
		case "/chunked":
			io.WriteString(w, doc[:20])
			w.(http.Flusher).Flush()
			io.WriteString(w, doc[20:])
		case "/long": // the PII first, then more than one read's worth
			w.Header().Set("Content-Length", fmt.Sprint(len(doc)+40<<10))
			io.WriteString(w, doc)
			w.Write(bytes.Repeat([]byte{' '}, 40<<10))
		default:
			io.WriteString(w, doc)
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	for _, tc := range []struct {
		name    string
		source  string
		path    string
		wantPII bool
	}{
		{"opted_in_edge", frontendID, "/customers", true},
		{"any_caller", "*", "/customers", true},
		{"chunked_answer", frontendID, "/chunked", true},
		{"long_answer", frontendID, "/long", true},
		{"other_edge_not_sampled", "spiffe://example.org/ns/prod/sa/reports", "/customers", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var in reports
			rec := newTestRecorder(t, &in, RecorderConfig{PII: []PIIEdge{{Source: tc.source, OneIn: 1, MaxBytes: 1 << 10}}})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go rec.scanLoop(ctx)
			ca := testpki.NewCA(t, "example.org")
			inL := listen(t)
			server.Store(startSidecar(t, Config{
				Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
				Inbound:    []Inbound{{Name: "in", Listener: inL, App: l.Addr().String()}},
				Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
				Recorder:   rec, DisableHTTP1FastPath: sp.disable,
			}))
			fastMiss.Store(0)
			outL := listen(t)
			startSidecar(t, Config{
				Identity: newStaticIdentity(ca, ca.SVID(t, frontendID, 0)),
				Outbound: []Outbound{{Name: "out", Listener: outL, Upstream: inL.Addr().String(), ID: spiffeid.RequireFromString(ordersID), HTTP1: true}},
			})
			for range 3 {
				if code, _ := get(t, &http.Client{}, "GET", "http://"+outL.Addr().String()+tc.path); code != 200 {
					t.Fatalf("GET: %d", code)
				}
			}
			if n := fastMiss.Load(); (n == 0) != !sp.disable {
				t.Errorf("%d of 3 requests not served by the inbound fast path (fast path on: %v)", n, !sp.disable)
			}
			var pii *wire.PIISample
			deadline := time.Now().Add(5 * time.Second)
			for {
				for _, e := range in.edges(t, rec) {
					if e.PII != nil {
						pii = e.PII
					}
				}
				if pii != nil && pii.Sampled == 3 || !tc.wantPII || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if !tc.wantPII {
				if pii != nil {
					t.Fatalf("edge not opted in was sampled: %+v", pii)
				}
				return
			}
			if pii == nil || pii.Sampled != 3 || pii.Cards != 3 || pii.Emails != 6 || pii.NationalIDs != 3 {
				t.Fatalf("PII sample %+v, want 3 responses with 3 cards, 6 e-mails, 3 national IDs", pii)
			}
		})
	}
}

func TestRecorderBounds(t *testing.T) {
	t.Run("overflow_edges_past_max_edges_name_their_caller", func(t *testing.T) {
		var r reports
		rec := newTestRecorder(t, &r, RecorderConfig{MaxEdges: 3})
		for i := range 10 {
			rec.Observe(&Observation{Direction: DirectionInbound, Source: fmt.Sprintf("spiffe://td/ns/x/sa/s%d", i), Method: "GET", Path: "/", Decision: "allow", Status: 200})
		}
		es := r.edges(t, rec)
		if len(es) != 10 {
			t.Fatalf("%d edges, want 3 and 7 overflow edges: %v", len(es), keys(es))
		}
		for i := 3; i < 10; i++ {
			if e, ok := es[fmt.Sprintf("inbound spiffe://td/ns/x/sa/s%d   {overflow} allow/ 2", i)]; !ok || e.Requests != 1 {
				t.Fatalf("overflow edge of s%d: %+v (have %v)", i, e, keys(es))
			}
		}
		if r.got[0].Dropped != 7 {
			t.Fatalf("dropped %d, want 7", r.got[0].Dropped)
		}
	})
	// A caller that fills a sidecar's table with distinct paths must not
	// hide the edges of the callers after it: it gets a quarter of the
	// table, its further requests land on its own overflow edge (which
	// names it as the one that overflowed, and keeps its refusals
	// refusals), and the next caller's new edge is recorded apart. Even four such callers (the whole table)
	// only push a new caller onto an overflow edge that still names it;
	// past maxNamedOverflow such edges, one names no one. Fails on the
	// parent: there the new caller's request was in an overflow edge
	// without a source.
	t.Run("one_caller_cannot_hide_another", func(t *testing.T) {
		const victim = "spiffe://td/ns/x/sa/new"
		for _, tc := range []struct {
			name      string
			attackers int
			want      string
		}{
			{"one_filler", 1, "inbound " + victim + "  GET /admin allow/ 2"},
			{"four_fillers", 4, "inbound " + victim + "   {overflow} allow/ 2"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var r reports
				rec := newTestRecorder(t, &r, RecorderConfig{MaxEdges: 8})
				for a := range tc.attackers {
					for i := range 100 {
						rec.Observe(&Observation{Direction: DirectionInbound, Source: fmt.Sprintf("spiffe://td/ns/x/sa/a%d", a), Method: "GET", Path: fmt.Sprintf("/p%c%c", 'a'+i/26, 'a'+i%26), Decision: "deny", Reason: "no_allow_match", Status: 403})
					}
				}
				rec.Observe(&Observation{Direction: DirectionInbound, Source: victim, Method: "GET", Path: "/admin", Decision: "allow", Status: 200})
				es := r.edges(t, rec)
				if e, ok := es[tc.want]; !ok || e.Requests != 1 {
					t.Fatalf("the new caller's request: want %q, have %v", tc.want, keys(es))
				}
				for a := range tc.attackers {
					if e := es[fmt.Sprintf("inbound spiffe://td/ns/x/sa/a%d   {overflow:peer} deny/no_allow_match 4", a)]; e.Requests != 98 {
						t.Fatalf("filler a%d's overflow edge: %+v (have %v)", a, e, keys(es))
					}
				}
			})
		}
		t.Run("named_overflow_bounded", func(t *testing.T) {
			var r reports
			rec := newTestRecorder(t, &r, RecorderConfig{MaxEdges: 1})
			for i := range maxNamedOverflow + 2 {
				rec.Observe(&Observation{Direction: DirectionInbound, Source: fmt.Sprintf("spiffe://td/ns/x/sa/s%d", i), Method: "GET", Path: "/", Decision: "allow"})
			}
			es := r.edges(t, rec)
			if len(es) != maxNamedOverflow+2 {
				t.Fatalf("%d edges, want 1, %d named overflow edges and one that names no one", len(es), maxNamedOverflow)
			}
			if e := es["inbound    {overflow} overflow/ 0"]; e.Requests != 1 {
				t.Fatalf("the overflow edge that names no one: %+v", e)
			}
		})
	})
	t.Run("reports_kept_while_server_unreachable_then_oldest_dropped", func(t *testing.T) {
		r := reports{fail: errors.New("server unreachable")}
		rec := newTestRecorder(t, &r, RecorderConfig{})
		for i := range maxPendingReports + 3 {
			rec.Observe(&Observation{Direction: DirectionInbound, Method: "GET", Path: fmt.Sprintf("/w%d", i), Decision: "allow"})
			if err := rec.Flush(context.Background()); err == nil {
				t.Fatal("flush succeeded with the server down")
			}
		}
		if len(rec.pending) != maxPendingReports {
			t.Fatalf("%d reports pending, want %d", len(rec.pending), maxPendingReports)
		}
		r.mu.Lock()
		r.fail = nil
		r.mu.Unlock()
		es := r.edges(t, rec)
		if len(es) != maxPendingReports {
			t.Fatalf("%d edges delivered, want %d", len(es), maxPendingReports)
		}
		if _, ok := es["inbound   GET /w0 allow/ 0"]; ok {
			t.Fatal("the oldest window was kept past the bound")
		}
		if _, ok := es[fmt.Sprintf("inbound   GET /w%d allow/ 0", maxPendingReports+2)]; !ok {
			t.Fatal("the newest window was lost")
		}
	})
	t.Run("samples_bounded_per_window", func(t *testing.T) {
		var r reports
		rec := newTestRecorder(t, &r, RecorderConfig{MaxSamples: 2})
		for range 5 {
			if rec.WantSample(false) {
				rec.AddSample(wire.AuditEvent{Decision: "deny"})
			}
		}
		rec.Observe(&Observation{Direction: DirectionInbound, Decision: "deny"})
		r.edges(t, rec)
		if n := len(r.got[0].Samples); n != 2 {
			t.Fatalf("%d samples, want 2", n)
		}
	})
}

func TestRecorderObserveAllocations(t *testing.T) {
	var r reports
	rec := newTestRecorder(t, &r, RecorderConfig{})
	o := &Observation{Direction: DirectionInbound, Source: frontendID, Method: "GET", Path: "/api/orders/list", Decision: "allow", Status: 200}
	rec.Observe(o)
	if n := testing.AllocsPerRun(100, func() { rec.Observe(o) }); n != 0 {
		t.Fatalf("%v allocations per observation of a known edge", n)
	}
}

// TestRecorderPIIEchoNotCounted: an app that echoes what the caller sent
// it (a form posted and shown back, a created record returned) discloses
// nothing the caller did not have: the personal data its answer repeats
// from the request (its body, form-encoded, or its query) is not counted,
// while data the request did not carry is. On both server paths. Fails
// on the parent (every echoed value counted as a disclosure: the
// exfiltration detector's PII check fires on a signup form).
func TestRecorderPIIEchoNotCounted(t *testing.T) { forServerPaths(t, testRecorderPIIEchoNotCounted) }

func testRecorderPIIEchoNotCounted(t *testing.T, sp serverPath) {
	l := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		fmt.Fprintf(w, `{"email":%q,"pan":%q,"ssn":%q,"manager":"carol@example.org"}`, r.PostForm.Get("email"), r.PostForm.Get("pan"), r.URL.Query().Get("ssn"))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	var in reports
	rec := newTestRecorder(t, &in, RecorderConfig{PII: []PIIEdge{{Source: frontendID, OneIn: 1, MaxBytes: 1 << 10}}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go rec.scanLoop(ctx)
	ca := testpki.NewCA(t, "example.org")
	inL := listen(t)
	startSidecar(t, Config{
		Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
		Inbound:    []Inbound{{Name: "in", Listener: inL, App: l.Addr().String()}},
		Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
		Recorder:   rec, DisableHTTP1FastPath: sp.disable,
	})
	outL := listen(t)
	startSidecar(t, Config{
		Identity: newStaticIdentity(ca, ca.SVID(t, frontendID, 0)),
		Outbound: []Outbound{{Name: "out", Listener: outL, Upstream: inL.Addr().String(), ID: spiffeid.RequireFromString(ordersID), HTTP1: true}},
	})
	for range 3 {
		resp, err := http.Post("http://"+outL.Addr().String()+"/signup?ssn=123-45-6789", "application/x-www-form-urlencoded",
			strings.NewReader("email=Alice%40Example.com&pan=4111-1111-1111-1111"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), "Alice@Example.com") {
			t.Fatalf("POST: %d %s", resp.StatusCode, body)
		}
	}
	var pii *wire.PIISample
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, e := range in.edges(t, rec) {
			if e.PII != nil {
				pii = e.PII
			}
		}
		if pii != nil && pii.Sampled == 3 {
			break
		}
	}
	if pii == nil || pii.Sampled != 3 || pii.Cards != 0 || pii.Emails != 3 || pii.NationalIDs != 0 {
		t.Fatalf("PII sample %+v, want 3 responses with only the 3 e-mails the requests did not carry", pii)
	}
}
