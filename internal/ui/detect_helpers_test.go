package ui_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// node is a workload attested with a join token: it holds an SVID and
// calls the agent API over mTLS as a sidecar does.
type node struct {
	id   string
	http *http.Client
}

// attest makes a join token for id and attests with it.
func (e *env) attest(id string) *node {
	e.t.Helper()
	var tok server.JoinTokenResponse
	if st := e.admin("POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: id}, &tok); st != http.StatusCreated && st != http.StatusOK {
		e.t.Fatalf("join token for %s: %d", id, st)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		e.t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		e.t.Fatal(err)
	}
	st, body := e.agent(e.client(), "POST", wire.PathAttest, wire.AttestRequest{JoinToken: tok.Token, CSR: csr})
	if st != http.StatusOK {
		e.t.Fatalf("attest %s: %d %s", id, st, body)
	}
	var resp wire.AttestResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		e.t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: resp.SVID.CertChain, PrivateKey: key}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}}}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &node{id: id, http: &http.Client{Transport: tr, Timeout: 20 * time.Second}}
}

// agent sends a JSON request to the agent API with c.
func (e *env) agent(c *http.Client, method, path string, in any) (int, []byte) {
	e.t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		e.t.Fatal(err)
	}
	req, _ := http.NewRequest(method, e.base+path, bytes.NewReader(b))
	resp, body := e.send(c, req, map[string]string{"Content-Type": "application/json"})
	return resp.StatusCode, []byte(body)
}

// probe makes a real finding: n's sidecar reports, through the server's
// records endpoint, a burst of denied requests from caller, which the
// probing detector judges. It returns the finding as the admin API lists
// it.
func (e *env) probe(n *node, caller string) detect.Finding {
	e.t.Helper()
	now := time.Now().UTC()
	edge := wire.EdgeRecord{Direction: "inbound", Source: caller, Port: 8080, Protocol: "http", Method: "GET", Path: "/admin/{*}",
		Decision: "deny", Reason: "no_allow_match", Status: 4, Requests: 40, RespBytes: 4000, LatencySumMicros: 20000, LatencyMaxMicros: 900}
	rep := wire.RecordReport{Component: "sidecar", Namespace: "prod", Labels: map[string]string{"app": "orders"}, Ports: []int{8080},
		Start: now.Add(-5 * time.Second), End: now, Edges: []wire.EdgeRecord{edge}}
	if st, body := e.agent(n.http, "POST", wire.PathRecords, rep); st != http.StatusNoContent {
		e.t.Fatalf("report records: %d %s", st, body)
	}
	var page server.Page[detect.Finding]
	if st := e.admin("GET", server.PathAdminFindings+"?"+url.Values{"identity": {caller}}.Encode(), nil, &page); st != http.StatusOK {
		e.t.Fatalf("list findings: %d", st)
	}
	i := slices.IndexFunc(page.Items, func(f detect.Finding) bool { return f.Detector == detect.DetectorProbing })
	if i < 0 {
		e.t.Fatalf("no probing finding about %s after the report: %+v", caller, page.Items)
	}
	return page.Items[i]
}

// watch opens n's watch stream and returns its updates (closed when the
// stream ends or ctx is done).
func (e *env) watch(ctx context.Context, n *node) <-chan wire.Update {
	e.t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.base+wire.PathWatch, nil)
	c := *n.http
	c.Timeout = 0
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		e.t.Fatalf("watch: %d %s", resp.StatusCode, b)
	}
	ch := make(chan wire.Update, 64)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 4<<20)
		for sc.Scan() {
			var u wire.Update
			if json.Unmarshal(sc.Bytes(), &u) != nil {
				return
			}
			select {
			case ch <- u:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}

// waitRevoked reads updates until one says whether id is revoked, and
// fails the test unless it says want within 10 s.
func waitRevoked(t *testing.T, ch <-chan wire.Update, id string, want bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case u, ok := <-ch:
			if !ok {
				t.Fatal("watch stream ended")
			}
			if u.Revocations == nil {
				continue
			}
			if slices.Contains(u.Revocations.SPIFFEIDs, id) == want {
				return
			}
		case <-deadline:
			t.Fatalf("the watch stream never said %s revoked = %v", id, want)
		}
	}
}

// pulledBy makes a finding on n's word alone: n's sidecar reports that
// src pulled 128 MiB from it in 4 calls (exfiltration, high), naming n
// as the destination.
func (e *env) pulledBy(n *node, src string) {
	e.t.Helper()
	now := time.Now().UTC()
	edge := wire.EdgeRecord{Direction: "inbound", Source: src, Port: 8080, Protocol: "http", Method: "GET", Path: "/export",
		Decision: "allow", Status: 2, Requests: 4, RespBytes: 128 << 20, LatencySumMicros: 2000, LatencyMaxMicros: 900}
	rep := wire.RecordReport{Component: "sidecar", Namespace: "prod", Labels: map[string]string{"app": "export"}, Ports: []int{8080},
		Start: now.Add(-5 * time.Second), End: now, Edges: []wire.EdgeRecord{edge}}
	if st, body := e.agent(n.http, "POST", wire.PathRecords, rep); st != http.StatusNoContent {
		e.t.Fatalf("report records: %d %s", st, body)
	}
}
