package proxy

import (
	"context"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/moatless/moatless/internal/attest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
	"github.com/moatless/moatless/internal/workload"
)

// wlSource is a Workload API source serving one identity to this
// process's uid, with a bundle that can change.
type wlSource struct{ workload.Publisher }

func (*wlSource) JWTSVID(context.Context, *workload.Identity, []string) (string, error) {
	return "", errors.New("no JWT-SVIDs here")
}

// serve publishes svid for this uid with a bundle of cas.
func (w *wlSource) serve(t *testing.T, seq uint64, svid *testpki.SVID, cas ...*testpki.CA) {
	t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(svid.Key)
	if err != nil {
		t.Fatal(err)
	}
	id := &workload.Identity{EntryID: "e1", SPIFFEID: svid.ID,
		Selectors: []wire.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(os.Geteuid())}},
		X509:      &workload.X509SVID{Chain: svid.Chain, ChainDER: svid.Chain[0].Raw, KeyDER: keyDER, Serial: svid.Chain[0].SerialNumber.Text(16), ExpiresAt: svid.Chain[0].NotAfter}}
	var auth []*x509.Certificate
	for _, ca := range cas {
		auth = append(auth, ca.Cert)
	}
	st, err := workload.NewState(spiffeid.RequireTrustDomainFromString("example.org"), seq, auth, nil, []*workload.Identity{id}, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Publish(st)
}

// TestRevokedAuthorityOverWorkloadAPI: a sidecar that gets its identity
// from a SPIFFE Workload API (go-spiffe's X509Source, as with
// identity.workload_api) closes a live connection from a peer chained to
// an authority the next bundle on the Workload API stream no longer
// holds.
func TestRevokedAuthorityOverWorkloadAPI(t *testing.T) {
	a, b := testpki.NewCA(t, "example.org"), testpki.NewCA(t, "example.org")
	dir, err := os.MkdirTemp("", "wl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	src := &wlSource{}
	own := b.SVID(t, ordersID, 0)
	src.serve(t, 1, own, a, b)
	wl, err := workload.New(workload.Config{SocketPath: sock, Source: src, Attestor: attest.NewUnix(attest.UnixConfig{SkipNames: true}), Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- wl.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-wl.Ready()
	x, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+sock)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })

	s, inL := inboundEcho(t, x)
	c, r := dialEcho(t, inL, b, a)
	if s.LiveConnections() != 1 {
		t.Fatal("connection not tracked")
	}
	start := time.Now()
	src.serve(t, 2, own, b) // the agent received a bundle without a
	t.Logf("revoked authority over the Workload API: live inbound connection closed %s after the agent published the bundle", closedWithin(t, c, r, start).Round(time.Microsecond))
}
