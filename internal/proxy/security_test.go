package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// TestSessionResumptionIsReverified: the outbound client config resumes
// TLS sessions, and a resumed session is checked against the revocation
// list again — a revoked client cannot ride an old session ticket.
func TestSessionResumptionIsReverified(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	inL := listen(t)
	s := startSidecar(t, Config{
		Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
		Inbound:    []Inbound{{Listener: inL, App: echoApp(t), Protocol: TCP}},
		Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
	})
	client := &tlsIdentity{src: newStaticIdentity(ca, ca.SVID(t, frontendID, 0)), now: time.Now, revoked: func() *revocationSet { return nil }}
	conf := client.clientConfig(spiffeid.RequireFromString(ordersID), "", nil)
	dial := func() (*tls.Conn, error) {
		c, err := tls.Dial("tcp", inL.Addr().String(), conf)
		if err != nil {
			return nil, err
		}
		// TLS 1.3 delivers the ticket after the handshake, and a server's
		// refusal of a client certificate arrives on first read.
		c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	first, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	second, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	if !second.ConnectionState().DidResume {
		t.Fatal("second connection did not resume the session")
	}
	second.Close()

	s.SetRevocations(&wire.Revocations{SPIFFEIDs: []string{frontendID}})
	if c, err := dial(); err == nil {
		resumed := c.ConnectionState().DidResume
		c.Close()
		t.Fatalf("revoked client accepted (resumed=%v)", resumed)
	}
}

// TestSerialRevocationClosesOnlyThatCertificate: revoking one serial closes
// connections made with that certificate, not others of the same ID.
func TestSerialRevocationClosesOnlyThatCertificate(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	inL := listen(t)
	s := startSidecar(t, Config{
		Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
		Inbound:    []Inbound{{Listener: inL, App: echoApp(t), Protocol: TCP}},
		Authorizer: allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
	})
	open := func(svid *testpki.SVID) *tls.Conn {
		ti := &tlsIdentity{src: newStaticIdentity(ca, svid), now: time.Now, revoked: func() *revocationSet { return nil }}
		conf := ti.clientConfig(spiffeid.RequireFromString(ordersID), "", nil)
		conf.ClientSessionCache = nil
		c, err := tls.Dial("tcp", inL.Addr().String(), conf)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 64)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	oldCert, newCert := ca.SVID(t, frontendID, 0), ca.SVID(t, frontendID, 0)
	a, b := open(oldCert), open(newCert)
	defer a.Close()
	defer b.Close()
	if n := s.SetRevocations(&wire.Revocations{Serials: []wire.RevokedSerial{{Serial: strings.ToUpper(serialHex(oldCert.Chain[0]))}}}); n != 1 {
		t.Fatalf("closed %d, want 1", n)
	}
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(a); err != nil && !strings.Contains(err.Error(), "closed") && !strings.Contains(err.Error(), "reset") {
		t.Logf("revoked connection ended with %v", err)
	}
	if s.LiveConnections() != 1 {
		t.Fatalf("live %d, want 1 (the other certificate's)", s.LiveConnections())
	}
}

// TestServerAuditReportsDenies: the join-mode audit sink posts denies in
// batches to the server's audit path over mTLS with the sidecar's SVID.
func TestServerAuditReportsDenies(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	var mu sync.Mutex
	var got []wire.AuditEvent
	var peer string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != wire.PathAudit {
			http.NotFound(w, r)
			return
		}
		var rep wire.AuditReport
		if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		mu.Lock()
		got = append(got, rep.Events...)
		peer = r.TLS.PeerCertificates[0].URIs[0].String()
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{ca.ServerCert(t, "", "127.0.0.1")},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool(),
	}
	srv.StartTLS()
	defer srv.Close()

	a := &ServerAudit{
		ServerAddr:  strings.TrimPrefix(srv.URL, "https://"),
		Identity:    newStaticIdentity(ca, ca.SVID(t, ordersID, 0)),
		ServerRoots: func() *x509.CertPool { return ca.Pool() },
		Logger:      discardLogger(),
	}
	for i := range 3 {
		a.Record(context.Background(), DecisionEvent{Decision: "deny", Source: frontendID, Path: "/p", Rule: i, ReasonCode: ReasonDenyRule})
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for a.Sent() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("sent %d of 3 (dropped %d)", a.Sent(), a.Dropped())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 || got[2].Rule != 2 || got[0].ReasonCode != string(ReasonDenyRule) || peer != ordersID {
		t.Fatalf("server got %+v from %s", got, peer)
	}
}

// TestAllowSampling: denies are always logged, allows at the sample rate.
func TestAllowSampling(t *testing.T) {
	for _, tc := range []struct {
		name       string
		rate       float64
		wantAllows int
	}{
		{"rate_0_logs_no_allow", 0, 0},
		{"rate_1_logs_every_allow", 1, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncBuf
			ca := testpki.NewCA(t, "example.org")
			inL := listen(t)
			startSidecar(t, Config{
				Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
				Inbound:         []Inbound{{Listener: inL, App: echoApp(t)}},
				Authorizer:      allowPrincipals(policy.ModeStrict, "example.org/ns/prod/sa/frontend"),
				DecisionLog:     slog.New(slog.NewJSONHandler(&logs, nil)),
				AllowSampleRate: tc.rate,
			})
			c := mtlsClient(t, ca, frontendID, ordersID)
			for range 5 {
				get(t, c, "GET", "https://"+inL.Addr().String()+"/")
			}
			get(t, c, "DELETE", "https://"+inL.Addr().String()+"/")
			out := logs.String()
			if n := strings.Count(out, `"decision":"allow"`); n != tc.wantAllows {
				t.Fatalf("%d allows logged, want %d", n, tc.wantAllows)
			}
			if n := strings.Count(out, `"decision":"deny"`); n != 1 {
				t.Fatalf("%d denies logged, want 1", n)
			}
		})
	}
}
