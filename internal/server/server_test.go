package server_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

func entryReq(parent, id string, sel ...string) server.EntryRequest {
	r := server.EntryRequest{SPIFFEID: id, ParentID: parent, Namespace: "prod", Labels: map[string]string{"app": "payments"}}
	for _, s := range sel {
		p, err := server.ParseSelector(s)
		if err != nil {
			panic(err)
		}
		r.Selectors = append(r.Selectors, p)
	}
	return r
}

func bundles(t *testing.T, b *wire.Bundle) (*x509bundle.Bundle, *jwtbundle.Bundle) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(b.TrustDomain)
	xb := x509bundle.New(td)
	for _, der := range b.X509Authorities {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		xb.AddX509Authority(c)
	}
	jb := jwtbundle.New(td)
	for _, a := range b.JWTAuthorities {
		pub, err := x509.ParsePKIXPublicKey(a.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if err := jb.AddJWTAuthority(a.KeyID, pub); err != nil {
			t.Fatal(err)
		}
	}
	return xb, jb
}

// TestIdentityFlow drives the agent API end to end: attest, renew, sign
// X.509 and JWT SVIDs for own entries, and every refusal the contract
// names.
func TestIdentityFlow(t *testing.T) {
	e := start(t, "")
	n := e.attest("spiffe://example.org/agent/node1")
	other := e.attest("spiffe://example.org/agent/node2")

	var bundle wire.Bundle
	e.admin("GET", server.PathAdminBundle, nil, &bundle)
	xb, jb := bundles(t, &bundle)

	// The node SVID verifies against the bundle and names the token's ID.
	var chain []*x509.Certificate
	for _, der := range n.svid.CertChain {
		c, _ := x509.ParseCertificate(der)
		chain = append(chain, c)
	}
	id, _, err := x509svid.Verify(chain, xb)
	if err != nil || id.String() != n.id {
		t.Fatalf("node SVID: %v %v", id, err)
	}

	var ent wire.Entry
	e.admin("POST", server.PathAdminEntries, entryReq(n.id, "spiffe://example.org/ns/prod/sa/payments", "unix:uid:1000"), &ent)
	var otherEnt wire.Entry
	e.admin("POST", server.PathAdminEntries, entryReq(other.id, "spiffe://example.org/ns/prod/sa/orders", "unix:uid:1001"), &otherEnt)

	// Renew keeps the ID.
	key := newKey(t)
	st, body := e.do(n.http, "POST", wire.PathRenew, "", wire.RenewRequest{CSR: csr(t, key)})
	if st != 200 {
		t.Fatalf("renew: %d %s", st, body)
	}
	var renewed wire.X509SVIDResponse
	json.Unmarshal(body, &renewed)
	if renewed.SVID.SPIFFEID != n.id || renewed.SVID.Serial == n.svid.Serial {
		t.Fatalf("renewed: %+v", renewed.SVID)
	}

	// X.509 SVID for its own entry.
	wkey := newKey(t)
	st, body = e.do(n.http, "POST", wire.PathSignX509, "", wire.SignX509Request{Requests: []wire.X509SVIDRequest{{EntryID: ent.ID, CSR: csr(t, wkey)}}})
	if st != 200 {
		t.Fatalf("sign: %d %s", st, body)
	}
	var signed wire.SignX509Response
	json.Unmarshal(body, &signed)
	leaf, _ := x509.ParseCertificate(signed.SVIDs[0].CertChain[0])
	if id, _, err := x509svid.Verify([]*x509.Certificate{leaf}, xb); err != nil || id.String() != ent.SPIFFEID {
		t.Fatalf("workload SVID: %v %v", id, err)
	}

	// JWT SVID for its own entry.
	st, body = e.do(n.http, "POST", wire.PathSignJWT, "", wire.SignJWTRequest{EntryID: ent.ID, Audience: []string{"spiffe://example.org/api"}})
	if st != 200 {
		t.Fatalf("jwt: %d %s", st, body)
	}
	var jr wire.SignJWTResponse
	json.Unmarshal(body, &jr)
	js, err := jwtsvid.ParseAndValidate(jr.Token, jb, []string{"spiffe://example.org/api"})
	if err != nil || js.ID.String() != ent.SPIFFEID {
		t.Fatalf("JWT-SVID: %v", err)
	}

	workload := &node{key: wkey, svid: signed.SVIDs[0]}
	workload.http = e.client(workload.cert())

	refusals := []struct {
		name   string
		caller *node
		path   string
		body   any
		status int
		want   string
	}{
		{"entry_of_another_node", n, wire.PathSignX509, wire.SignX509Request{Requests: []wire.X509SVIDRequest{{EntryID: otherEnt.ID, CSR: csr(t, wkey)}}}, 404, "no entry"},
		{"unknown_entry", n, wire.PathSignJWT, wire.SignJWTRequest{EntryID: "nope", Audience: []string{"a"}}, 404, "no entry"},
		{"jwt_no_audience", n, wire.PathSignJWT, wire.SignJWTRequest{EntryID: ent.ID}, 400, "audience"},
		{"csr_garbage", n, wire.PathSignX509, wire.SignX509Request{Requests: []wire.X509SVIDRequest{{EntryID: ent.ID, CSR: []byte("junk")}}}, 400, "csr"},
		{"empty_batch", n, wire.PathSignX509, wire.SignX509Request{}, 400, "requests"},
		{"workload_svid_is_not_a_node", workload, wire.PathSignX509, wire.SignX509Request{Requests: []wire.X509SVIDRequest{{EntryID: ent.ID, CSR: csr(t, wkey)}}}, 403, "not an attested node"},
		{"no_client_cert", &node{http: e.client(nil)}, wire.PathRenew, wire.RenewRequest{CSR: csr(t, key)}, 401, "mutual TLS"},
		{"unknown_field", n, wire.PathAck, `{"version":1,"component":"agent","extra":1}`, 400, "unknown field"},
		{"ack_future_version", n, wire.PathAck, wire.Ack{Version: 1 << 40, Component: "agent"}, 400, "only at"},
		{"ack_bad_component", n, wire.PathAck, wire.Ack{Version: 1, Component: "Agent X"}, 400, "component"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			st, body := e.do(tc.caller.http, "POST", tc.path, "", tc.body)
			if st != tc.status || !strings.Contains(string(body), tc.want) {
				t.Fatalf("got %d %s, want %d containing %q", st, body, tc.status, tc.want)
			}
		})
	}

	// Revoking the workload's ID stops issuance for its entry.
	e.admin("POST", server.PathAdminRevocations, server.RevokeRequest{SPIFFEID: ent.SPIFFEID, Reason: "test"}, nil)
	st, body = e.do(n.http, "POST", wire.PathSignJWT, "", wire.SignJWTRequest{EntryID: ent.ID, Audience: []string{"a"}})
	if st != 403 {
		t.Fatalf("revoked entry: %d %s", st, body)
	}
	// Revoking the node's current serial cuts the node off.
	e.admin("POST", server.PathAdminRevocations, server.RevokeRequest{Serial: n.svid.Serial}, nil)
	st, body = e.do(n.http, "POST", wire.PathAck, "", wire.Ack{Version: 1, Component: "agent"})
	if st != 403 {
		t.Fatalf("revoked node serial: %d %s", st, body)
	}

	res, err := audit.Verify(context.Background(), e.srv.Store(), audit.VerifyOptions{})
	if err != nil || res.Records < 10 {
		t.Fatalf("audit chain: %+v %v", res, err)
	}
}

// TestJoinTokens: a token is single use, bound to its ID, and refused
// when unknown or expired; refusals change nothing and are audited.
func TestJoinTokens(t *testing.T) {
	e := start(t, "")
	var tok server.JoinTokenResponse
	e.admin("POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: "spiffe://example.org/agent/a", TTL: wire.Duration(time.Minute)}, &tok)
	var short server.JoinTokenResponse
	e.admin("POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: "spiffe://example.org/agent/b", TTL: wire.Duration(time.Second)}, &short)
	var bad server.JoinTokenResponse
	e.admin("POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: "spiffe://example.org/agent/c"}, &bad)

	attest := func(token string, csrDER []byte) (int, string) {
		st, body := e.do(e.client(nil), "POST", wire.PathAttest, "", wire.AttestRequest{JoinToken: token, CSR: csrDER})
		return st, string(body)
	}
	key := newKey(t)
	// A bad CSR does not burn the token.
	if st, body := attest(bad.Token, []byte("garbage")); st != 400 || !strings.Contains(body, "csr") {
		t.Fatalf("bad csr: %d %s", st, body)
	}
	if st, body := attest(bad.Token, csr(t, key)); st != 200 {
		t.Fatalf("token after a bad CSR: %d %s", st, body)
	}
	if st, body := attest(tok.Token, csr(t, key)); st != 200 {
		t.Fatalf("first use: %d %s", st, body)
	}
	e.clock.Add(2 * time.Second)
	for _, tc := range []struct{ name, token string }{
		{"reused", tok.Token}, {"expired", short.Token}, {"unknown", "mlj_nope"}, {"near_miss", tok.Token + "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if st, body := attest(tc.token, csr(t, key)); st != 401 || !strings.Contains(body, "unknown, expired or already used") {
				t.Fatalf("got %d %s", st, body)
			}
		})
	}
	var list []store.JoinToken
	e.admin("GET", server.PathAdminJoinTokens+"?all=true", nil, &list)
	if len(list) != 3 {
		t.Fatalf("tokens: %+v", list)
	}
	for _, jt := range list {
		raw, _ := json.Marshal(jt)
		if strings.Contains(string(raw), "mlj_") {
			t.Fatal("token listing reveals a token")
		}
	}
	// The store holds only hashes.
	var n int
	sum := sha256.Sum256([]byte(tok.Token))
	e.srv.Store().SQL().QueryRow("SELECT COUNT(*) FROM join_tokens WHERE token_hash = $1", sum[:]).Scan(&n)
	if n != 1 {
		t.Fatal("token not stored by its SHA-256")
	}
	recs, _ := audit.List(context.Background(), e.srv.Store(), 0, 1000)
	reasons := map[string]int{}
	for _, r := range recs {
		if r.Kind == audit.KindAttest {
			reasons[r.Outcome+"/"+r.Details["reason"]]++
		}
	}
	want := map[string]int{"success/": 2, "failure/bad_csr": 1, "failure/used_token": 1, "failure/expired_token": 1, "failure/unknown_token": 2}
	if fmt.Sprint(reasons) != fmt.Sprint(want) {
		t.Fatalf("audited attestations %v, want %v", reasons, want)
	}
}

// TestWatch: the first update carries every section; later ones only what
// changed for this node; acks show up in the node list.
func TestWatch(t *testing.T) {
	e := start(t, "")
	n := e.attest("spiffe://example.org/agent/w")
	other := e.attest("spiffe://example.org/agent/other")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := e.watch(ctx, n)
	first := next(t, ch)
	if first.Bundle == nil || first.Entries == nil || first.Revocations == nil || len(*first.Entries) != 0 || first.Heartbeat {
		t.Fatalf("first update: %+v", first)
	}

	// Another node's entry: no update for us.
	e.admin("POST", server.PathAdminEntries, entryReq(other.id, "spiffe://example.org/x", "unix:uid:1"), nil)
	var ent wire.Entry
	e.admin("POST", server.PathAdminEntries, entryReq(n.id, "spiffe://example.org/ns/a/sa/b", "unix:uid:2", "unix:path:/usr/bin/app"), &ent)
	u := next(t, ch)
	if u.Entries == nil || len(*u.Entries) != 1 || (*u.Entries)[0].ID != ent.ID || u.Bundle != nil || u.Revocations != nil {
		t.Fatalf("entry update: %+v", u)
	}
	if u.Version <= first.Version {
		t.Fatalf("version went %d -> %d", first.Version, u.Version)
	}
	e.admin("POST", server.PathAdminRevocations, server.RevokeRequest{SPIFFEID: "spiffe://example.org/evil", Force: true}, nil)
	u2 := next(t, ch)
	if u2.Revocations == nil || len(u2.Revocations.SPIFFEIDs) != 1 || u2.Entries != nil || u2.Version <= u.Version {
		t.Fatalf("revocation update: %+v", u2)
	}
	e.admin("POST", server.PathAdminCARotate, nil, nil)
	u3 := next(t, ch)
	if u3.Bundle == nil || u3.Bundle.SequenceNumber <= first.Bundle.SequenceNumber {
		t.Fatalf("bundle update: %+v", u3)
	}
	pem, _ := os.ReadFile(filepath.Join(e.dir, server.BundleFile))
	if strings.Count(string(pem), "BEGIN CERTIFICATE") != len(u3.Bundle.X509Authorities) {
		t.Fatal("bundle.pem not rewritten after rotation")
	}

	st, body := e.do(n.http, "POST", wire.PathAck, "", wire.Ack{Version: u3.Version, Component: "agent"})
	if st != 204 {
		t.Fatalf("ack: %d %s", st, body)
	}
	var nodes []server.NodeStatus
	e.admin("GET", server.PathAdminNodes, nil, &nodes)
	for _, ns := range nodes {
		switch ns.SPIFFEID {
		case n.id:
			if !ns.Connected || !ns.InSync || ns.AckedVersion != u3.Version || ns.Component != "agent" {
				t.Fatalf("watching node: %+v", ns)
			}
		case other.id:
			if ns.InSync {
				t.Fatalf("node that never acked is in sync: %+v", ns)
			}
		}
	}

	// Heartbeats carry the version last sent and nothing else.
	for {
		hb := nextAny(t, ch)
		if hb.Heartbeat {
			if hb.Version != u3.Version || hb.Bundle != nil || hb.Entries != nil || hb.Revocations != nil || hb.Policies != nil {
				t.Fatalf("heartbeat: %+v", hb)
			}
			break
		}
	}

	// Revoking the watcher ends its stream.
	e.admin("POST", server.PathAdminRevocations, server.RevokeRequest{SPIFFEID: n.id}, nil)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("stream of a revoked node stayed open")
		}
	}
}

// TestWatchSince: a client that echoes the epoch of its last stream and
// the version it applied gets only what changed after that version; a
// client the server cannot vouch for (no epoch: older clients; another
// store's epoch; a version the store never reached) gets every section,
// so it is whole again from one update whatever it held.
func TestWatchSince(t *testing.T) {
	e := start(t, "")
	n := e.attest("spiffe://example.org/agent/since")
	e.admin("POST", server.PathAdminEntries, entryReq(n.id, "spiffe://example.org/ns/a/sa/since", "unix:uid:3"), nil)
	e.admin("POST", server.PathAdminRevocations, server.RevokeRequest{SPIFFEID: "spiffe://example.org/gone", Force: true}, nil)
	if st, _, body := apply(e, allowOrders, false); st != 200 {
		t.Fatal(body)
	}
	ctx, cancel := context.WithCancel(context.Background())
	first := next(t, e.watch(ctx, n))
	cancel()
	if first.Epoch == "" || first.Resumed || first.HeartbeatInterval.Std() != testHeartbeat {
		t.Fatalf("first update of a fresh stream: epoch %q resumed %v heartbeat %s", first.Epoch, first.Resumed, first.HeartbeatInterval.Std())
	}
	// One more change after first: an entry of this node.
	var ent wire.Entry
	e.admin("POST", server.PathAdminEntries, entryReq(n.id, "spiffe://example.org/ns/a/sa/later", "unix:uid:4"), &ent)

	complete := func(u wire.Update) bool {
		return !u.Resumed && u.Bundle != nil && u.Entries != nil && len(*u.Entries) == 2 && u.Revocations != nil &&
			len(u.Revocations.SPIFFEIDs) == 1 && u.Policies != nil && u.Policies.Version == 1
	}
	onlyEntries := func(u wire.Update) bool {
		return u.Resumed && u.Bundle == nil && u.Revocations == nil && u.Policies == nil && u.Entries != nil && len(*u.Entries) == 2
	}
	nothing := func(u wire.Update) bool {
		return u.Resumed && u.Bundle == nil && u.Revocations == nil && u.Policies == nil && u.Entries == nil
	}
	now := first.Version + 1
	for _, tc := range []struct {
		name  string
		query string
		want  func(wire.Update) bool
	}{
		{"no_epoch_older_client", fmt.Sprintf("since=%d", first.Version), complete},
		{"no_since", "epoch=" + first.Epoch, complete},
		// Version 0 of this epoch: every section moved since, the bundle
		// too (the server's start publishes the bundle it starts with).
		{"since_zero", "since=0&epoch=" + first.Epoch, func(u wire.Update) bool {
			return u.Resumed && u.Bundle != nil && u.Entries != nil && u.Revocations != nil && u.Policies != nil
		}},
		{"resume_before_entry_change", fmt.Sprintf("since=%d&epoch=%s", first.Version, first.Epoch), onlyEntries},
		{"resume_up_to_date", fmt.Sprintf("since=%d&epoch=%s", now, first.Epoch), nothing},
		{"since_ahead_of_store", fmt.Sprintf("since=%d&epoch=%s", now+100, first.Epoch), complete},
		{"other_epoch", fmt.Sprintf("since=%d&epoch=%s", first.Version, strings.Repeat("ab", 16)), complete},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			u := next(t, e.watchQuery(ctx, n, tc.query))
			if u.Version != now || u.Epoch != first.Epoch || !tc.want(u) {
				t.Fatalf("first update with ?%s: %+v", tc.query, u)
			}
		})
	}
	for _, tc := range []struct{ name, query string }{
		{"since_not_a_number", "since=x"},
		{"since_negative", "since=-1"},
		{"since_twice", "since=1&since=2"},
		{"epoch_not_hex", "since=1&epoch=ZZ"},
		{"epoch_upper_case", "since=1&epoch=AB"},
		{"epoch_too_long", "since=1&epoch=" + strings.Repeat("a", 65)},
		{"unknown_parameter", "from=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if st, body := e.do(n.http, "GET", wire.PathWatch+"?"+tc.query, "", nil); st != 400 {
				t.Fatalf("got %d %s, want 400", st, body)
			}
		})
	}
}

// TestRestartKeepsState: entries, tokens, nodes, the CA keys and the admin
// token survive a restart.
func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	n := e.attest("spiffe://example.org/agent/r")
	var ent wire.Entry
	e.admin("POST", server.PathAdminEntries, entryReq(n.id, "spiffe://example.org/svc", "unix:uid:7"), &ent)
	var tok server.JoinTokenResponse
	e.admin("POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: "spiffe://example.org/agent/later"}, &tok)
	var before server.CAStatus
	e.admin("GET", server.PathAdminCA, nil, &before)
	token := e.token
	e.stop()

	e2 := start(t, dir)
	if e2.token != token {
		t.Fatal("admin token changed across restart")
	}
	var after server.CAStatus
	e2.admin("GET", server.PathAdminCA, nil, &after)
	if after.BundlePEM != before.BundlePEM {
		t.Fatal("CA changed across restart")
	}
	var got wire.Entry
	e2.admin("GET", server.PathAdminEntries+"/"+ent.ID, nil, &got)
	if got.SPIFFEID != ent.SPIFFEID {
		t.Fatalf("entry after restart: %+v", got)
	}
	// The node's old SVID still works, and the unused token still attests.
	n.http = e2.client(n.cert())
	if st, body := e2.do(n.http, "POST", wire.PathAck, "", wire.Ack{Version: 1, Component: "agent"}); st != 204 {
		t.Fatalf("node after restart: %d %s", st, body)
	}
	if st, body := e2.do(e2.client(nil), "POST", wire.PathAttest, "", wire.AttestRequest{JoinToken: tok.Token, CSR: csr(t, newKey(t))}); st != 200 {
		t.Fatalf("token after restart: %d %s", st, body)
	}
	if _, err := audit.Verify(context.Background(), e2.srv.Store(), audit.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestRefusalFloodIsBounded: anonymous refusals are audited up to a rate;
// past it they get 429 and no audit record each (the clock is frozen, so
// the bucket does not refill), while authenticated calls still work.
func TestRefusalFloodIsBounded(t *testing.T) {
	e := start(t, "")
	c := e.client(nil)
	codes := map[int]int{}
	for i := 0; i < 230; i++ {
		var st int
		if i%2 == 0 {
			st, _ = e.do(c, "POST", wire.PathAttest, "", wire.AttestRequest{JoinToken: "mlj_guess", CSR: []byte{1}})
		} else {
			st, _ = e.do(c, "GET", server.PathAdminEntries, "mla_guess", nil)
		}
		codes[st]++
	}
	if codes[401] != 200 || codes[429] != 30 {
		t.Fatalf("status counts %v, want 200 refusals then 30 rate-limited", codes)
	}
	recs, _ := audit.List(context.Background(), e.srv.Store(), 0, 1000)
	refused := 0
	for _, r := range recs {
		if r.Outcome != audit.Success {
			refused++
		}
	}
	if refused != 200 {
		t.Fatalf("%d refusals audited, want 200", refused)
	}
	e.admin("GET", server.PathAdminEntries, nil, nil) // the admin is not locked out
}

// TestResetAdminToken: --reset-admin-token writes a new token and the old
// one stops working; nothing else changes.
func TestResetAdminToken(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	old := e.token
	var before server.CAStatus
	e.admin("GET", server.PathAdminCA, nil, &before)
	e.stop()
	e2 := startTB(t, dir, func(c *server.Config) { c.ResetAdminToken = true })
	if e2.token == old || !strings.HasPrefix(e2.token, "mla_") {
		t.Fatalf("token not replaced: %q", e2.token)
	}
	if st, _ := e2.do(e2.client(nil), "GET", server.PathAdminEntries, old, nil); st != 401 {
		t.Fatalf("old token after reset: %d", st)
	}
	var after server.CAStatus
	e2.admin("GET", server.PathAdminCA, nil, &after)
	if after.BundlePEM != before.BundlePEM {
		t.Fatal("resetting the admin token changed the CA")
	}
}

// TestKEKProtectsCAKeys: a store holding sealed CA keys never gets a fresh
// KEK made for it, and the wrong KEK cannot open it; neither changes the
// store.
func TestKEKProtectsCAKeys(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	e.stop()
	kek := filepath.Join(dir, "kek")
	orig, err := os.ReadFile(kek)
	if err != nil || len(orig) != 32 {
		t.Fatalf("kek: %d bytes, %v", len(orig), err)
	}
	fi, _ := os.Stat(kek)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("kek mode %v", fi.Mode())
	}
	newServer := func() error {
		st := config.DefaultServer(func(string) string { return "" })
		st.DataDir, st.TrustDomain, st.Listen = dir, "example.org", "127.0.0.1:0"
		st.Complete()
		s, err := server.New(context.Background(), server.Config{Settings: st})
		if err == nil {
			s.Close()
		}
		return err
	}
	os.Remove(kek)
	if err := newServer(); err == nil || !strings.Contains(err.Error(), "kek") {
		t.Fatalf("start without the KEK: %v", err)
	}
	if _, err := os.Stat(kek); err == nil {
		t.Fatal("a new KEK was created for a store with sealed CA keys")
	}
	wrong := append([]byte(nil), orig...)
	wrong[0] ^= 1
	os.WriteFile(kek, wrong, 0o600)
	if err := newServer(); err == nil || !strings.Contains(err.Error(), "key-encryption key") {
		t.Fatalf("start with a wrong KEK: %v", err)
	}
	os.WriteFile(kek, orig, 0o600)
	os.Chmod(kek, 0o644)
	if err := newServer(); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("start with a world-readable KEK: %v", err)
	}
	os.Chmod(kek, 0o600)
	if err := newServer(); err != nil {
		t.Fatalf("start with the right KEK: %v", err)
	}
}

// TestEntryUpdate: moving an entry to another parent reaches both nodes'
// watch streams; a stale revision is refused.
func TestEntryUpdate(t *testing.T) {
	e := start(t, "")
	n1 := e.attest("spiffe://example.org/agent/u1")
	n2 := e.attest("spiffe://example.org/agent/u2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch1, ch2 := e.watch(ctx, n1), e.watch(ctx, n2)
	next(t, ch1)
	next(t, ch2)
	var ent wire.Entry
	e.admin("POST", server.PathAdminEntries, entryReq(n1.id, "spiffe://example.org/u/w", "unix:uid:9"), &ent)
	if u := next(t, ch1); u.Entries == nil || len(*u.Entries) != 1 {
		t.Fatalf("n1 after create: %+v", u)
	}
	req := entryReq(n2.id, "spiffe://example.org/u/w", "unix:uid:9", "unix:gid:9")
	var upd wire.Entry
	e.admin("PUT", server.PathAdminEntries+"/"+ent.ID+"?revision=1", req, &upd)
	if upd.ID != ent.ID || upd.Revision != 2 || upd.ParentID != n2.id || len(upd.Selectors) != 2 {
		t.Fatalf("updated: %+v", upd)
	}
	if u := next(t, ch1); u.Entries == nil || len(*u.Entries) != 0 {
		t.Fatalf("old parent after the move: %+v", u)
	}
	if u := next(t, ch2); u.Entries == nil || len(*u.Entries) != 1 || (*u.Entries)[0].Revision != 2 {
		t.Fatalf("new parent after the move: %+v", u)
	}
	// The old parent can no longer get SVIDs for it; the new one can.
	if st, body := e.do(n1.http, "POST", wire.PathSignJWT, "", wire.SignJWTRequest{EntryID: ent.ID, Audience: []string{"a"}}); st != 404 {
		t.Fatalf("old parent signing: %d %s", st, body)
	}
	if st, body := e.do(n2.http, "POST", wire.PathSignJWT, "", wire.SignJWTRequest{EntryID: ent.ID, Audience: []string{"a"}}); st != 200 {
		t.Fatalf("new parent signing: %d %s", st, body)
	}
	if st, body := e.do(e.client(nil), "PUT", server.PathAdminEntries+"/"+ent.ID+"?revision=1", e.token, req); st != 409 || !strings.Contains(string(body), "revision") {
		t.Fatalf("stale revision: %d %s", st, body)
	}
}
