package server_test

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// TestReattestationSupersedesEarlierNodeSVIDs: attesting a node ID again
// (a machine re-provisioned with a new join token, say after it was
// compromised) revokes every node SVID issued for that ID before, renewed
// ones included: otherwise whoever kept a copy of the old one could renew
// it forever beside the new agent. The new one works; workload entries
// stay.
func TestReattestationSupersedesEarlierNodeSVIDs(t *testing.T) {
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

	fresh := e.attest(id)
	for _, tc := range []struct {
		name string
		c    *http.Client
		want int
	}{
		{"first_svid", old.http, 403},
		{"renewed_svid", oldRenewed, 403},
		{"new_svid", fresh.http, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if st, body := e.do(tc.c, "POST", wire.PathRenew, "", wire.RenewRequest{CSR: csr(t, newKey(t))}); st != tc.want {
				t.Fatalf("renew: %d %s, want %d", st, body, tc.want)
			}
		})
	}
	var revs store.RevocationList
	e.admin("GET", server.PathAdminRevocations, nil, &revs)
	n := 0
	for _, r := range revs.Serials {
		if r.SPIFFEID == id && r.Reason == "node re-attested" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d serials revoked as re-attested, want 2: %+v", n, revs.Serials)
	}
}
