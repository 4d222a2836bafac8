package server_test

import (
	"context"
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// TestReplacingJoinTokenSupersedesEarlierNodeSVIDs: a join token created
// with replace (a machine re-provisioned after a compromise) makes the
// agent that attests with it the node: every node SVID issued for that ID
// before, renewed ones included, is revoked, so whoever kept a copy of the
// old one cannot go on renewing it beside the new agent. A token without
// replace leaves earlier holders alone: replicas of a join-mode sidecar or
// gateway share one ID.
func TestReplacingJoinTokenSupersedesEarlierNodeSVIDs(t *testing.T) {
	e := start(t, "")
	const id = "spiffe://example.org/agent/node1"
	old := e.attest(id)
	st, body := e.do(old.http, "POST", wire.PathRenew, "", wire.RenewRequest{CSR: csr(t, old.key)})
	if st != 200 {
		t.Fatalf("renew: %d %s", st, body)
	}
	var renewed wire.X509SVIDResponse
	if err := json.Unmarshal(body, &renewed); err != nil {
		t.Fatal(err)
	}
	oldRenewed := e.client(&tls.Certificate{Certificate: renewed.SVID.CertChain, PrivateKey: old.key})

	replica := e.attest(id)
	renews := func(t *testing.T, want map[string]int, clients map[string]*http.Client) {
		t.Helper()
		for name, c := range clients {
			if st, body := e.do(c, "POST", wire.PathRenew, "", wire.RenewRequest{CSR: csr(t, newKey(t))}); st != want[name] {
				t.Errorf("%s renews: %d %s, want %d", name, st, body, want[name])
			}
		}
	}
	t.Run("without_replace_holders_coexist", func(t *testing.T) {
		renews(t, map[string]int{"first": 200, "renewed": 200, "replica": 200},
			map[string]*http.Client{"first": old.http, "renewed": oldRenewed, "replica": replica.http})
	})

	var tok server.JoinTokenResponse
	e.admin("POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: id, Replace: true}, &tok)
	if !tok.Replace {
		t.Fatalf("the token does not say it replaces: %+v", tok.JoinToken)
	}
	n := &node{id: id, key: newKey(t)}
	st, body = e.do(e.client(nil), "POST", wire.PathAttest, "", wire.AttestRequest{JoinToken: tok.Token, CSR: csr(t, n.key)})
	if st != 200 {
		t.Fatalf("attest with the replacing token: %d %s", st, body)
	}
	var resp wire.AttestResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatal(err)
	}
	n.svid = resp.SVID
	t.Run("with_replace_only_the_new_one", func(t *testing.T) {
		renews(t, map[string]int{"first": 403, "renewed": 403, "replica": 403, "new": 200},
			map[string]*http.Client{"first": old.http, "renewed": oldRenewed, "replica": replica.http, "new": e.client(n.cert())})
	})
	var revs store.RevocationList
	e.admin("GET", server.PathAdminRevocations, nil, &revs)
	got := 0
	for _, r := range revs.Serials {
		if r.SPIFFEID == id && r.Reason == "node re-attested" {
			got++
		}
	}
	// The first, its renewal, the replica, and the three renewals of the
	// first subtest.
	if got != 6 {
		t.Fatalf("%d serials revoked as re-attested, want 6: %+v", got, revs.Serials)
	}
}

// TestAttestReadsRevocationsFromTheStore: an ID revoked a moment ago on
// another replica is in the store before this replica's revocation set
// catches up (a notification or a poll later). Attestation, which mints a
// fresh node SVID, must not slip through that window: it reads the
// revocation from the store. The revocation is written straight into the
// store here, as another replica would, with this replica's poll far off.
func TestAttestReadsRevocationsFromTheStore(t *testing.T) {
	e := start(t, "", func(c *config.Server) { c.PollInterval = wire.Duration(time.Minute) })
	const id = "spiffe://example.org/agent/revoked-elsewhere"
	var tok server.JoinTokenResponse
	e.admin("POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: id}, &tok)
	db := e.srv.Store()
	err := db.Tx(context.Background(), func(tx *sql.Tx) error {
		_, err := db.RevokeID(context.Background(), tx, store.RevokedID{SPIFFEID: id, Reason: "compromised", RevokedBy: "replica-2", RevokedAt: time.Now()})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	st, body := e.do(e.client(nil), "POST", wire.PathAttest, "", wire.AttestRequest{JoinToken: tok.Token, CSR: csr(t, newKey(t))})
	if st != http.StatusForbidden {
		t.Fatalf("attest of an ID revoked in the store: %d %s, want 403", st, body)
	}
}
