package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/ca"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// caStep runs one operator step through the admin API and fails the test
// unless it succeeds.
func (e *env) caStep(path string, in server.CAStepRequest) server.CAStepResponse {
	e.t.Helper()
	var out server.CAStepResponse
	e.admin("POST", path, in, &out)
	return out
}

// rotate replaces the active authority of kind ("x509", "jwt"): it
// prepares a successor, has the test's clients trust it (as the CLI reads
// bundle.pem on every call) and activates it. It returns the ID of the
// authority that was active, now retired, and the prepare step's answer.
func (e *env) rotate(kind string) (old string, prepared server.CAStepResponse) {
	e.t.Helper()
	var st server.CAStatus
	e.admin("GET", server.PathAdminCA, nil, &st)
	x, j := activeIDs(st)
	old = x
	if kind == "jwt" {
		old = j
	}
	prepared = e.caStep(server.PathAdminCAPrepare, server.CAStepRequest{Kind: kind})
	e.pool.AppendCertsFromPEM([]byte(prepared.BundlePEM))
	e.caStep(server.PathAdminCAActivate, server.CAStepRequest{Kind: kind})
	return old, prepared
}

func activeIDs(st server.CAStatus) (x, j string) {
	for _, a := range st.Authorities {
		if a.State == ca.StateActive {
			if a.Kind == ca.KindX509 {
				x = a.ID
			} else {
				j = a.ID
			}
		}
	}
	return x, j
}

// serverCertIssuer is the subject key ID of the CA that signed the
// certificate the server presents now.
func (e *env) serverCertIssuer() string {
	e.t.Helper()
	conn, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1", Time: e.clock.Now})
	if err != nil {
		e.t.Fatalf("handshake: %v", err)
	}
	defer conn.Close()
	return hex.EncodeToString(conn.ConnectionState().PeerCertificates[0].AuthorityKeyId)
}

func pemSKIDs(t *testing.T, b []byte) []string {
	var out []string
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, hex.EncodeToString(c.SubjectKeyId))
	}
}

// The emergency procedure of docs/ca.md "Compromised key" through the
// admin API on a running server, with an attested node watching:
// prepare and activate successors, taint the old keys (the bundle the
// node receives marks them, the server re-issues its own certificate),
// revoke them (they leave the bundle the node receives and bundle.pem;
// the node's SVID signed by the revoked key is refused on its open
// connection and at a new handshake), and the revocation survives a
// restart.
func TestCACompromisedKeyProcedure(t *testing.T) {
	e := start(t, "")
	n := e.attest("spiffe://example.org/agent/a")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := e.watch(ctx, n)
	first := next(t, ch)
	if first.Bundle == nil {
		t.Fatal("first update has no bundle")
	}
	var st server.CAStatus
	e.admin("GET", server.PathAdminCA, nil, &st)
	oldX, oldJ := activeIDs(st)
	if got := e.serverCertIssuer(); got != oldX {
		t.Fatalf("server certificate signed by %s, want %s", got, oldX)
	}
	// The node's SVID works.
	renew := func(c *http.Client) (int, string) {
		st, body := e.do(c, "POST", wire.PathRenew, "", wire.RenewRequest{CSR: csr(t, newKey(t))})
		return st, string(body)
	}
	nodeClient := n.http
	if code, body := renew(nodeClient); code != 200 {
		t.Fatalf("renew before: %d %s", code, body)
	}

	for _, k := range []string{"x509", "jwt"} {
		p := e.caStep(server.PathAdminCAPrepare, server.CAStepRequest{Kind: k})
		if p.Authority.State != ca.StatePrepared {
			t.Fatalf("prepare %s: %+v", k, p.Authority)
		}
		// Clients trust the new authority from bundle.pem (as the CLI
		// reads it on every call) before the server certificate moves.
		if !e.pool.AppendCertsFromPEM([]byte(p.BundlePEM)) {
			t.Fatal("no certificate in the bundle")
		}
		a := e.caStep(server.PathAdminCAActivate, server.CAStepRequest{Kind: k})
		if a.Authority.ID != p.Authority.ID || a.Authority.State != ca.StateActive {
			t.Fatalf("activate %s: %+v", k, a.Authority)
		}
	}
	// Taint both (kind found from the ID).
	e.caStep(server.PathAdminCATaint, server.CAStepRequest{ID: oldX})
	tj := e.caStep(server.PathAdminCATaint, server.CAStepRequest{ID: oldJ})
	if tj.Authority.State != ca.StateTainted {
		t.Fatalf("taint: %+v", tj.Authority)
	}
	var b *wire.Bundle
	for b == nil || !slices.Contains(b.TaintedX509Authorities, oldX) || !jwtTainted(b, oldJ) {
		u := next(t, ch)
		if u.Bundle != nil {
			b = u.Bundle
		}
	}
	if len(b.TaintedX509Authorities) != 1 || len(b.X509Authorities) != 2 {
		t.Errorf("tainted bundle: %d authorities, tainted %v", len(b.X509Authorities), b.TaintedX509Authorities)
	}
	// The server no longer presents a certificate of the tainted key.
	if got := e.serverCertIssuer(); got == oldX {
		t.Error("the server still presents a certificate signed by the tainted authority")
	}
	// A tainted key is still trusted: the node can renew.
	if code, body := renew(nodeClient); code != 200 {
		t.Fatalf("renew with a tainted signer: %d %s", code, body)
	}

	rx := e.caStep(server.PathAdminCARevoke, server.CAStepRequest{Kind: "x509", ID: oldX})
	if rx.Authority.State != ca.StateRevoked || rx.BundleSequence <= b.SequenceNumber {
		t.Fatalf("revoke: %+v, sequence %d", rx.Authority, rx.BundleSequence)
	}
	for {
		u := next(t, ch)
		if u.Bundle != nil && u.Bundle.SequenceNumber == rx.BundleSequence {
			b = u.Bundle
			break
		}
	}
	for _, der := range b.X509Authorities {
		c, _ := x509.ParseCertificate(der)
		if hex.EncodeToString(c.SubjectKeyId) == oldX {
			t.Error("the revoked authority is still in the bundle the node receives")
		}
	}
	if len(b.TaintedX509Authorities) != 0 {
		t.Errorf("bundle after revoke: tainted %v", b.TaintedX509Authorities)
	}
	// The node's watch stream ends once it has that bundle: its SVID
	// chains to the revoked authority.
	for ended := false; !ended; {
		select {
		case _, ok := <-ch:
			ended = !ok
		case <-time.After(10 * time.Second):
			t.Fatal("the watch stream of a node whose SVID the revoked authority signed stays open")
		}
	}
	e.caStep(server.PathAdminCARevoke, server.CAStepRequest{ID: oldJ})
	e.admin("GET", server.PathAdminBundle, nil, &b)
	if jwtIn(b, oldJ) || len(b.JWTAuthorities) != 1 {
		t.Errorf("bundle after the JWT revoke: %d keys, %s still there: %v", len(b.JWTAuthorities), oldJ, jwtIn(b, oldJ))
	}
	bundlePEM, _ := os.ReadFile(filepath.Join(e.dir, server.BundleFile))
	if ids := pemSKIDs(t, bundlePEM); slices.Contains(ids, oldX) || len(ids) != 1 {
		t.Errorf("bundle.pem after revoke holds %v (revoked %s)", ids, oldX)
	}
	revokedFile, _ := os.ReadFile(filepath.Join(e.dir, server.RevokedAuthoritiesFile))
	if got := strings.Fields(string(revokedFile)); !slices.Equal(got, sorted(oldX, oldJ)) {
		t.Errorf("%s = %q, want %s and %s", server.RevokedAuthoritiesFile, revokedFile, oldX, oldJ)
	}
	// The node's SVID was signed by the revoked key: refused on the
	// connection it already has open ...
	if code, body := renew(nodeClient); code != 403 || !strings.Contains(body, "was revoked") {
		t.Errorf("renew on the open connection after revoke: %d %s", code, body)
	}
	// ... and at a new handshake.
	fresh := e.client(n.cert())
	if _, err := fresh.Post("https://"+e.addr+wire.PathRenew, "application/json", strings.NewReader("{}")); err == nil {
		t.Error("a new connection with an SVID of the revoked authority was accepted")
	}

	// Every step is audited.
	var page server.AuditPage
	e.admin("GET", server.PathAdminAudit+"?limit=100", nil, &page)
	count := map[string]int{}
	for _, r := range page.Records {
		count[r.Kind]++
	}
	for k, want := range map[string]int{server.KindCAPrepare: 2, server.KindCAActivate: 2, server.KindCATaint: 2, server.KindCARevoke: 2} {
		if count[k] != want {
			t.Errorf("%d %s audit records, want %d", count[k], k, want)
		}
	}

	// After a restart the keys are still revoked.
	cancel()
	e.stop()
	e2 := start(t, e.dir)
	var st2 server.CAStatus
	e2.admin("GET", server.PathAdminCA, nil, &st2)
	for _, a := range st2.Authorities {
		if (a.ID == oldX || a.ID == oldJ) && a.State != ca.StateRevoked {
			t.Errorf("after a restart %s is %s", a.ID, a.State)
		}
	}
	if ids := pemSKIDs(t, []byte(st2.BundlePEM)); slices.Contains(ids, oldX) {
		t.Error("after a restart the revoked authority is back in the bundle")
	}
}

func jwtTainted(b *wire.Bundle, kid string) bool {
	for _, a := range b.JWTAuthorities {
		if a.KeyID == kid {
			return a.Tainted
		}
	}
	return false
}

func jwtIn(b *wire.Bundle, kid string) bool {
	return slices.ContainsFunc(b.JWTAuthorities, func(a wire.JWTAuthority) bool { return a.KeyID == kid })
}

func sorted(s ...string) []string {
	slices.Sort(s)
	return s
}

// Every refused step answers with a clear error and changes nothing: no
// new bundle sequence, no audit record, the same authorities.
func TestCAStepRefusals(t *testing.T) {
	e := start(t, "")
	var st server.CAStatus
	e.admin("GET", server.PathAdminCA, nil, &st)
	activeX, activeJ := activeIDs(st)
	unknownX := strings.Repeat("0", 40)
	for _, tc := range []struct {
		name, path string
		body       string
		token      string
		code       int
		want       string
	}{
		{"no_credential", server.PathAdminCATaint, `{"id":"` + activeX + `"}`, "-", 401, ""},
		{"prepare_no_kind", server.PathAdminCAPrepare, `{}`, "", 400, "kind: required"},
		{"prepare_bad_kind", server.PathAdminCAPrepare, `{"kind":"X509"}`, "", 400, `X509\" is not`},
		{"prepare_with_id", server.PathAdminCAPrepare, `{"kind":"x509","id":"` + activeX + `"}`, "", 400, "takes no id"},
		{"prepare_unknown_field", server.PathAdminCAPrepare, `{"kind":"x509","now":true}`, "", 400, "now"},
		{"prepare_no_body", server.PathAdminCAPrepare, ``, "", 400, "empty body"},
		{"prepare_query", server.PathAdminCAPrepare + "?kind=x509", `{"kind":"x509"}`, "", 400, "kind"},
		{"activate_nothing_prepared", server.PathAdminCAActivate, `{"kind":"jwt"}`, "", 409, "no jwt authority is prepared"},
		{"activate_active", server.PathAdminCAActivate, `{"kind":"x509","id":"` + activeX + `"}`, "", 409, "only a prepared authority"},
		{"taint_no_id", server.PathAdminCATaint, `{"kind":"x509"}`, "", 400, "id: required"},
		{"taint_bad_id", server.PathAdminCATaint, `{"id":"../etc"}`, "", 400, "not an authority ID"},
		{"taint_upper_hex", server.PathAdminCATaint, `{"id":"` + strings.ToUpper(activeX) + `"}`, "", 400, "not an authority ID"},
		{"taint_kind_mismatch", server.PathAdminCATaint, `{"kind":"jwt","id":"` + activeX + `"}`, "", 400, "but kind is jwt"},
		{"taint_active_x509", server.PathAdminCATaint, `{"id":"` + activeX + `"}`, "", 409, "is active and signs"},
		{"taint_active_jwt", server.PathAdminCATaint, `{"kind":"jwt","id":"` + activeJ + `"}`, "", 409, "is active and signs"},
		{"taint_unknown", server.PathAdminCATaint, `{"id":"` + unknownX + `"}`, "", 404, "no authority has ID"},
		{"revoke_active", server.PathAdminCARevoke, `{"id":"` + activeX + `"}`, "", 409, "only a tainted authority"},
		{"revoke_unknown", server.PathAdminCARevoke, `{"kind":"x509","id":"` + unknownX + `"}`, "", 404, "no x509 authority"},
		{"taint_get", server.PathAdminCATaint, ``, "", 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before server.CAStatus
			e.admin("GET", server.PathAdminCA, nil, &before)
			var page server.AuditPage
			e.admin("GET", server.PathAdminAudit+"?limit=1", nil, &page)
			tok := e.token
			if tc.token == "-" {
				tok = ""
			}
			method := "POST"
			if strings.HasSuffix(tc.name, "_get") {
				method = "GET"
			}
			var body any
			if tc.body != "" {
				body = tc.body
			}
			code, out := e.do(e.client(nil), method, tc.path, tok, body)
			if code != tc.code || !strings.Contains(string(out), tc.want) {
				t.Fatalf("%d %s, want %d containing %q", code, out, tc.code, tc.want)
			}
			var after server.CAStatus
			e.admin("GET", server.PathAdminCA, nil, &after)
			b1, _ := json.Marshal(before.Authorities)
			b2, _ := json.Marshal(after.Authorities)
			if after.BundleSequence != before.BundleSequence || string(b1) != string(b2) {
				t.Error("a refused step changed the CA")
			}
			var page2 server.AuditPage
			e.admin("GET", server.PathAdminAudit+"?limit=1", nil, &page2)
			if len(page2.Records) > 0 && strings.HasPrefix(page2.Records[0].Kind, "ca.") && (len(page.Records) == 0 || page2.Records[0].Seq != page.Records[0].Seq) {
				t.Errorf("a refused step wrote a CA audit record %s", page2.Records[0].Kind)
			}
		})
	}
}

// A store restored from a backup taken before a revocation holds the
// revoked key again: the server refuses to start on it and says what to
// do, because DATA_DIR/ca-revoked remembers the revocation.
func TestCARestoredStoreCannotBringRevokedKeyBack(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	oldX, p := e.rotate("x509")
	e.caStep(server.PathAdminCATaint, server.CAStepRequest{ID: oldX})
	e.stop()
	restore := backupStore(t, dir)
	e = start(t, dir)
	e.pool.AppendCertsFromPEM([]byte(p.BundlePEM))
	e.caStep(server.PathAdminCARevoke, server.CAStepRequest{ID: oldX})
	e.stop()
	restore()
	cfg := config.DefaultServer(func(string) string { return "" })
	cfg.DataDir, cfg.TrustDomain, cfg.Listen = dir, "example.org", "127.0.0.1:0"
	cfg.Store, cfg.KEKFile, cfg.AdminIDs = "", "", nil
	cfg.Complete()
	_, err := server.New(context.Background(), server.Config{Settings: cfg, Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "holds a revoked authority") || !strings.Contains(err.Error(), oldX) || !strings.Contains(err.Error(), server.RevokedAuthoritiesFile) {
		t.Fatalf("start on the restored store: %v", err)
	}
	t.Logf("refused: %v", err)
}

// A JWT-SVID the server validates (the secrets API's JWT login, as token
// exchange does: both read the live bundle) is accepted while its key is
// tainted and refused once it is revoked.
func TestCARevokedJWTKeyRefusedAtLogin(t *testing.T) {
	e := start(t, "")
	admin := e.client(nil)
	pol := "name: ci\nsubjects:\n  jwt_roles: [ci]\npaths:\n  - path: secret/data/ci/*\n    capabilities: [read]\n"
	if st, out := e.vreq(admin, "POST", "/v1/sys/policies/apply", e.token, map[string]any{"files": []map[string]string{{"name": "p.yaml", "content": pol}}}); st != 200 {
		t.Fatalf("apply: %d %v", st, out)
	}
	if st, out := e.vreq(admin, "POST", "/v1/auth/jwt/role/ci", e.token, map[string]any{"bound_audiences": []string{"moatless-secrets"},
		"bound_subject_patterns": []string{"spiffe://example.org/ci/*"}}); st != 204 {
		t.Fatalf("jwt role: %d %v", st, out)
	}
	tok, _, err := e.srv.CA().SignJWTSVID(spiffeid.RequireFromString("spiffe://example.org/ci/build"), []string{"moatless-secrets"}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	login := func() int {
		st, _ := e.vreq(admin, "POST", "/v1/auth/jwt/login", "", map[string]any{"role": "ci", "jwt": tok})
		return st
	}
	var st server.CAStatus
	e.admin("GET", server.PathAdminCA, nil, &st)
	_, oldJ := activeIDs(st)
	e.caStep(server.PathAdminCAPrepare, server.CAStepRequest{Kind: "jwt"})
	e.caStep(server.PathAdminCAActivate, server.CAStepRequest{Kind: "jwt"})
	e.caStep(server.PathAdminCATaint, server.CAStepRequest{ID: oldJ})
	if got := login(); got != 200 {
		t.Fatalf("login with a JWT-SVID of a tainted key: %d, want 200", got)
	}
	e.caStep(server.PathAdminCARevoke, server.CAStepRequest{ID: oldJ})
	if got := login(); got != 400 {
		t.Fatalf("login with a JWT-SVID of a revoked key: %d, want 400", got)
	}
}

// Two replicas on one PostgreSQL store: a taint through one replica makes
// the other re-issue its own server certificate, a revoke through the
// other reaches the first replica's agents, bundle.pem and
// DATA_DIR/ca-revoked, and the first replica's listener refuses the node
// SVID the revoked key signed.
func TestCATaintRevokeAcrossReplicas(t *testing.T) {
	envs := startReplicas(t, 2)
	a, b := envs[0], envs[1]
	n := a.attest("spiffe://example.org/agent/r")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := a.watch(ctx, n)
	next(t, ch)
	var st server.CAStatus
	a.admin("GET", server.PathAdminCA, nil, &st)
	oldX, _ := activeIDs(st)

	p := b.caStep(server.PathAdminCAPrepare, server.CAStepRequest{Kind: "x509"})
	for _, e := range envs {
		e.pool.AppendCertsFromPEM([]byte(p.BundlePEM))
	}
	b.caStep(server.PathAdminCAActivate, server.CAStepRequest{Kind: "x509"})
	b.caStep(server.PathAdminCATaint, server.CAStepRequest{ID: oldX})
	waitFor(t, "replica a to re-issue its server certificate", func() bool { return a.serverCertIssuer() != oldX })

	a.caStep(server.PathAdminCARevoke, server.CAStepRequest{ID: oldX})
	for {
		u := next(t, ch)
		if u.Bundle != nil && len(u.Bundle.X509Authorities) == 1 {
			break
		}
	}
	for _, e := range envs {
		waitFor(t, "bundle.pem without the revoked authority", func() bool {
			b, _ := os.ReadFile(filepath.Join(e.dir, server.BundleFile))
			return !slices.Contains(pemSKIDs(t, b), oldX)
		})
		waitFor(t, "ca-revoked to name it", func() bool {
			b, _ := os.ReadFile(filepath.Join(e.dir, server.RevokedAuthoritiesFile))
			return strings.TrimSpace(string(b)) == oldX
		})
	}
	// The node SVID signed by the revoked key, on a new connection to
	// either replica.
	for i, e := range envs {
		c := e.client(n.cert())
		if _, err := c.Post("https://"+e.addr+wire.PathRenew, "application/json", strings.NewReader("{}")); err == nil {
			t.Errorf("replica %d accepted a node SVID of the revoked authority", i)
		}
	}
}

// TestCARestoredStoreRaisesBundleSequence: a store restored on purpose
// from a backup older than the last bundle the server published holds a
// lower bundle sequence, which agents refuse (a lagging replica's bundle
// looks the same). The server raises it past what its data directory
// published, so the agents take the restored bundle at once; a plain
// restart changes nothing.
func TestCARestoredStoreRaisesBundleSequence(t *testing.T) {
	dir := t.TempDir()
	seqOf := func(e *env) uint64 {
		n, _ := e.srv.CA().Bundle().SequenceNumber()
		return n
	}
	e := start(t, dir)
	before := seqOf(e)
	e.stop()
	restore := backupStore(t, dir)
	e = start(t, dir)
	e.caStep(server.PathAdminCAPrepare, server.CAStepRequest{Kind: "x509"})
	published := seqOf(e)
	if published <= before {
		t.Fatalf("prepare left the sequence at %d (was %d)", published, before)
	}
	e.stop()
	e = start(t, dir)
	if got := seqOf(e); got != published {
		t.Fatalf("a plain restart moved the sequence from %d to %d", published, got)
	}
	e.stop()
	restore()
	e = start(t, dir)
	if got := seqOf(e); got <= published {
		t.Fatalf("after restoring a backup from sequence %d the server publishes %d, not past the %d agents hold", before, got, published)
	}
	if n := len(e.srv.CA().Bundle().X509Authorities()); n != 1 {
		t.Fatalf("the restored bundle has %d X.509 authorities, want the backup's 1", n)
	}
}

// backupStore copies the SQLite store of the stopped server in dir (the
// file and its write-ahead log as they are) and returns what puts the
// copy back: a backup restored on purpose.
func backupStore(t *testing.T, dir string) (restore func()) {
	t.Helper()
	db := filepath.Join(dir, "moatless.db")
	backup := map[string][]byte{}
	for _, f := range []string{"", "-wal", "-shm"} {
		if b, err := os.ReadFile(db + f); err == nil {
			backup[f] = b
		}
	}
	return func() {
		t.Helper()
		for _, f := range []string{"", "-wal", "-shm"} {
			os.Remove(db + f)
			if b, ok := backup[f]; ok {
				if err := os.WriteFile(db+f, b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// TestCARestoredStoreKeepsTaint: a store restored from a backup taken
// before a taint (not a revocation) held the tainted authority as a plain
// retired one, and the server started on it without a word: agents
// stopped replacing SVIDs the compromised key signed, and the taint the
// operator took was gone. DATA_DIR/ca-tainted now remembers taints; at
// start a retired authority it names is tainted again (audited), and an
// active one (the store predates its successor) refuses the start.
func TestCARestoredStoreKeepsTaint(t *testing.T) {
	for _, tc := range []struct {
		name string
		kind string
		// backupAfterActivate: the backup was taken once the successor
		// was active (the old authority retired), else before prepare.
		backupAfterActivate bool
	}{
		{"retired_x509_tainted_again", "x509", true},
		{"retired_jwt_tainted_again", "jwt", true},
		{"active_x509_refused", "x509", false},
		{"active_jwt_refused", "jwt", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			e := start(t, dir)
			var st server.CAStatus
			e.admin("GET", server.PathAdminCA, nil, &st)
			oldX, oldJ := activeIDs(st)
			old := oldX
			if tc.kind == "jwt" {
				old = oldJ
			}
			var restore func()
			if !tc.backupAfterActivate {
				e.stop()
				restore = backupStore(t, dir)
				e = start(t, dir)
			}
			p := e.caStep(server.PathAdminCAPrepare, server.CAStepRequest{Kind: tc.kind})
			e.pool.AppendCertsFromPEM([]byte(p.BundlePEM))
			e.caStep(server.PathAdminCAActivate, server.CAStepRequest{Kind: tc.kind})
			if tc.backupAfterActivate {
				e.stop()
				restore = backupStore(t, dir)
				e = start(t, dir)
				e.pool.AppendCertsFromPEM([]byte(p.BundlePEM))
			}
			e.caStep(server.PathAdminCATaint, server.CAStepRequest{ID: old})
			e.stop()
			if b, err := os.ReadFile(filepath.Join(dir, server.TaintedAuthoritiesFile)); err != nil || !strings.Contains(string(b), old) {
				t.Fatalf("%s after the taint: %q, %v", server.TaintedAuthoritiesFile, b, err)
			}
			restore()
			if !tc.backupAfterActivate {
				cfg := config.DefaultServer(func(string) string { return "" })
				cfg.DataDir, cfg.TrustDomain, cfg.Listen = dir, "example.org", "127.0.0.1:0"
				cfg.Store, cfg.KEKFile, cfg.AdminIDs = "", "", nil
				cfg.Complete()
				srv, err := server.New(context.Background(), server.Config{Settings: cfg, Logger: slog.New(slog.DiscardHandler)})
				if err == nil {
					srv.Close()
					t.Fatal("started on a store that holds the tainted authority active")
				}
				if !strings.Contains(err.Error(), old) || !strings.Contains(err.Error(), server.TaintedAuthoritiesFile) || !strings.Contains(err.Error(), "active") {
					t.Fatalf("start on the restored store: %v", err)
				}
				t.Logf("refused: %v", err)
				return
			}
			e = start(t, dir)
			e.pool.AppendCertsFromPEM([]byte(p.BundlePEM))
			e.admin("GET", server.PathAdminCA, nil, &st)
			i := slices.IndexFunc(st.Authorities, func(a ca.Authority) bool { return a.ID == old })
			if i < 0 || st.Authorities[i].State != ca.StateTainted {
				t.Fatalf("after the restore the authority %s is %+v, want tainted", old, st.Authorities)
			}
			var page server.AuditPage
			e.admin("GET", server.PathAdminAudit+"?limit=200", nil, &page)
			if !slices.ContainsFunc(page.Records, func(r server.AuditRecord) bool {
				return r.Kind == server.KindCATaint && r.Subject == old && r.Actor == "spiffe://example.org/moatless/server" && strings.Contains(r.Details["reason"], "restored")
			}) {
				t.Fatalf("no audit record of the re-applied taint of %s", old)
			}
			// A plain restart takes no step.
			seq := st.BundleSequence
			e.stop()
			e = start(t, dir)
			e.pool.AppendCertsFromPEM([]byte(p.BundlePEM))
			e.admin("GET", server.PathAdminCA, nil, &st)
			if st.BundleSequence != seq {
				t.Fatalf("a plain restart moved the bundle sequence from %d to %d", seq, st.BundleSequence)
			}
		})
	}
}
