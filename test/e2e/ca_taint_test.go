package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// caAuthority is what "moatless ca show -o json" lists of an authority.
type caAuthority struct {
	Kind  string `json:"kind"`
	ID    string `json:"id"`
	State string `json:"state"`
}

func (p *plane) authorities() []caAuthority {
	p.t.Helper()
	var st struct {
		Authorities []caAuthority `json:"authorities"`
	}
	if err := json.Unmarshal([]byte(p.admin("ca", "show", "-o", "json")), &st); err != nil {
		p.t.Fatal(err)
	}
	return st.Authorities
}

func (p *plane) authority(kind, state string) string {
	p.t.Helper()
	for _, a := range p.authorities() {
		if a.Kind == kind && a.State == state {
			return a.ID
		}
	}
	p.t.Fatalf("no %s %s authority", state, kind)
	return ""
}

// bundleIDs are the subject key IDs of the certificates in a PEM file.
func bundleIDs(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range pemCertificates(t, b) {
		ids = append(ids, hex.EncodeToString(c.SubjectKeyId))
	}
	return ids
}

func pemCertificates(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return out
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// serverAccepts reports whether the server completes a request from a
// client presenting cert (the handshake and /readyz), verifying the
// server with the current bundle.pem.
func (p *plane) serverAccepts(t *testing.T, cert tls.Certificate) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.dataDir, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("https://" + p.addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

// startCAPlane starts a server and an agent with an entry for this
// process, and returns the workload's first X509-SVID context.
func startCAPlane(t *testing.T) (*plane, *agentProc, *workloadapi.Client, *workloadapi.X509Context) {
	t.Helper()
	p := startPlane(t)
	a := p.startAgent(p.joinToken(agentID), t.TempDir())
	p.admin("entry", "create", "--parent", agentID, "--spiffe-id", "spiffe://e2e.test/ns/shop/sa/web", "--selector", uidSelector())
	wl := a.client(t)
	return p, a, wl, fetchX509(t, wl)
}

// TestCACompromisedKey is the emergency procedure of docs/ca.md
// "Compromised key" with a real server process, a real agent and a
// workload on it: prepare and activate successors, taint the old keys (the
// bundle marks them), revoke them (they leave the bundle the agent serves
// its workloads and bundle.pem, and an SVID the revoked key signed is
// refused by the server's listener).
func TestCACompromisedKey(t *testing.T) {
	p, _, wl, x := startCAPlane(t)
	oldX, oldJ := p.authority("x509", "active"), p.authority("jwt", "active")
	if got := hex.EncodeToString(x.DefaultSVID().Certificates[0].AuthorityKeyId); got != oldX {
		t.Fatalf("workload SVID signed by %s, want the active %s", got, oldX)
	}
	svid := x.DefaultSVID()
	oldCert := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		oldCert.Certificate = append(oldCert.Certificate, c.Raw)
	}
	if !p.serverAccepts(t, oldCert) {
		t.Fatal("the server refuses the workload SVID before anything was revoked")
	}

	// 1. Successors, activated at once.
	for _, k := range []string{"x509", "jwt"} {
		p.admin("ca", "prepare", "--kind", k)
		if out := p.admin("ca", "activate", "--kind", k); !strings.Contains(out, "refuses\nthe SVIDs it signs until the bundle reaches it") {
			t.Errorf("ca activate does not warn about peers without the new bundle:\n%s", out)
		}
	}
	newX := p.authority("x509", "active")
	if newX == oldX || p.authority("x509", "retired") != oldX || p.authority("jwt", "retired") != oldJ {
		t.Fatalf("after activate: %+v", p.authorities())
	}

	// 2. Taint: the bundle names the old keys.
	p.admin("ca", "taint", oldX)
	p.admin("ca", "taint", "--kind", "jwt", oldJ)
	var b struct {
		X509    [][]byte `json:"x509_authorities"`
		Tainted []string `json:"tainted_x509_authorities"`
		JWT     []struct {
			KeyID   string `json:"key_id"`
			Tainted bool   `json:"tainted"`
		} `json:"jwt_authorities"`
	}
	if err := json.Unmarshal([]byte(p.admin("ca", "bundle", "-o", "json")), &b); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(b.Tainted, []string{oldX}) || len(b.X509) != 2 {
		t.Errorf("bundle after taint: %d X.509 authorities, tainted %v; want 2 and [%s]", len(b.X509), b.Tainted, oldX)
	}
	for _, j := range b.JWT {
		if j.Tainted != (j.KeyID == oldJ) {
			t.Errorf("JWT key %s tainted=%v", j.KeyID, j.Tainted)
		}
	}
	// Still trusted until revoked.
	if !p.serverAccepts(t, oldCert) {
		t.Error("the server refuses an SVID of a tainted (not revoked) authority")
	}

	// 3. Revoke: out of every bundle, refused by the listener.
	p.admin("ca", "revoke", oldX)
	revoked := time.Now()
	p.admin("ca", "revoke", oldJ)
	if ids := bundleIDs(t, filepath.Join(p.dataDir, "bundle.pem")); !slices.Equal(ids, []string{newX}) {
		t.Errorf("bundle.pem after the revoke holds %v, want only %s", ids, newX)
	}
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	waitFor(t, 30*time.Second, "the agent to serve a bundle without the revoked authority", func() bool {
		x, err := wl.FetchX509Context(deadline(t, 5*time.Second))
		if err != nil {
			return false
		}
		xb, err := x.Bundles.GetX509BundleForTrustDomain(td)
		if err != nil {
			return false
		}
		var ids []string
		for _, c := range xb.X509Authorities() {
			ids = append(ids, hex.EncodeToString(c.SubjectKeyId))
		}
		return slices.Equal(ids, []string{newX})
	})
	t.Logf("the agent served its workload a bundle without the revoked authority %v after ca revoke returned", time.Since(revoked).Round(time.Millisecond))
	if p.serverAccepts(t, oldCert) {
		t.Error("the server accepts an SVID signed by the revoked authority")
	}
	if out := p.admin("ca", "show"); !strings.Contains(out, oldX) || !strings.Contains(out, "revoked") {
		t.Errorf("ca show does not list the revoked authority:\n%s", out)
	}

	// 4. A restart keeps it revoked.
	p.server.stop(t)
	p.restart()
	if ids := bundleIDs(t, filepath.Join(p.dataDir, "bundle.pem")); slices.Contains(ids, oldX) {
		t.Errorf("after a restart bundle.pem holds the revoked authority again: %v", ids)
	}
	if p.serverAccepts(t, oldCert) {
		t.Error("after a restart the server accepts an SVID signed by the revoked authority")
	}
}

// TestCATaintAgentReissues: after "ca taint", the real agent re-issues at
// once the workload X509-SVID and its own node SVID signed by the tainted
// key, and a workload's next JWT-SVID is signed by the new key; after "ca
// revoke" the agent is still connected (its node SVID is of the new key):
// an entry created after the revoke reaches the workload.
func TestCATaintAgentReissues(t *testing.T) {
	p, a, wl, _ := startCAPlane(t)
	oldX, oldJ := p.authority("x509", "active"), p.authority("jwt", "active")
	kid := func() string {
		t.Helper()
		tok, err := wl.FetchJWTSVID(deadline(t, 10*time.Second), jwtsvid.Params{Audience: "orders"})
		if err != nil {
			t.Fatal(err)
		}
		return decodeKid(t, tok.Marshal())
	}
	if got := kid(); got != oldJ {
		t.Fatalf("JWT-SVID signed with %s, want %s", got, oldJ)
	}
	for _, k := range []string{"x509", "jwt"} {
		p.admin("ca", "prepare", "--kind", k)
		p.admin("ca", "activate", "--kind", k)
	}
	newX, newJ := p.authority("x509", "active"), p.authority("jwt", "active")
	start := time.Now()
	p.admin("ca", "taint", oldX)
	p.admin("ca", "taint", oldJ)
	waitFor(t, 30*time.Second, "the agent to re-issue the workload SVID under the new key", func() bool {
		x, err := wl.FetchX509Context(deadline(t, 5*time.Second))
		return err == nil && hex.EncodeToString(x.DefaultSVID().Certificates[0].AuthorityKeyId) == newX
	})
	t.Logf("workload X509-SVID re-issued under the new key %v after the taint command started", time.Since(start).Round(time.Millisecond))
	// The JWT taint is a later bundle than the X.509 one: the cached
	// JWT-SVID is dropped once the agent has it.
	waitFor(t, 30*time.Second, "a JWT-SVID signed with the new key "+newJ, func() bool { return kid() == newJ })

	p.admin("ca", "revoke", oldX)
	p.admin("ca", "revoke", oldJ)
	const api = "spiffe://e2e.test/ns/shop/sa/api"
	p.admin("entry", "create", "--parent", agentID, "--spiffe-id", api, "--selector", uidSelector())
	waitFor(t, 30*time.Second, "an entry created after the revoke to reach the workload", func() bool {
		x, err := wl.FetchX509Context(deadline(t, 5*time.Second))
		if err != nil {
			return false
		}
		var ids []string
		for _, s := range x.SVIDs {
			if hex.EncodeToString(s.Certificates[0].AuthorityKeyId) != newX {
				return false
			}
			ids = append(ids, s.ID.String())
		}
		return slices.Contains(ids, api)
	})
	for _, n := range p.nodes() {
		if n.SPIFFEID == agentID && (!n.Connected || n.Revoked) {
			t.Errorf("after the revoke the agent is listed as %+v", n)
		}
	}
	if strings.Contains(a.out.String(), "tls: bad certificate") {
		t.Errorf("the server refused the agent's node SVID:\n%s", a.out.String())
	}
}

// decodeKid returns the kid of a compact JWS's protected header.
func decodeKid(t *testing.T, tok string) string {
	t.Helper()
	h, _, _ := strings.Cut(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		t.Fatal(err)
	}
	var hdr struct {
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal(b, &hdr); err != nil {
		t.Fatal(err)
	}
	return hdr.Kid
}
