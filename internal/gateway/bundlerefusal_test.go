package gateway

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// TestGatewayBundleRefusalsCounted: a joined gateway counts every trust
// bundle it refuses in moatless_gateway_bundle_refusals_total by reason
// (a lagging replica's older bundle, a forked one), and still serves with
// the one in force. Fails on the parent (no series).
func TestGatewayBundleRefusalsCounted(t *testing.T) {
	ca, other := testpki.NewCA(t, td), testpki.NewCA(t, td)
	svid := ca.SVID(t, gatewayID, time.Hour).X509SVID()
	id := &proxy.NodeIdentity{SVID: func() *x509svid.SVID { return svid }}
	bundle := func(seq uint64, cas ...*testpki.CA) wire.Bundle {
		b := wire.Bundle{TrustDomain: td, SequenceNumber: seq}
		for _, c := range cas {
			b.X509Authorities = append(b.X509Authorities, c.Cert.Raw)
		}
		return b
	}
	if err := id.SetBundle(bundle(5, ca)); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	tg := startGatewayWith(t, ca, startUpstream(t, ca, ordersID, echoApp(t)), nil, func(o *Options) {
		o.Identity, o.Registerer = id, reg
	})
	for _, b := range []wire.Bundle{bundle(4, ca, other), bundle(5, ca, other), bundle(3, other)} {
		if err := id.SetBundle(b); err == nil {
			t.Fatalf("bundle %d taken", b.SequenceNumber)
		}
	}
	want := `
# HELP moatless_gateway_bundle_refusals_total Trust bundles from the server refused, the one in force kept, by reason: older (a lower sequence number), forked (the same sequence number, other authorities), invalid.
# TYPE moatless_gateway_bundle_refusals_total counter
moatless_gateway_bundle_refusals_total{reason="forked"} 1
moatless_gateway_bundle_refusals_total{reason="invalid"} 0
moatless_gateway_bundle_refusals_total{reason="older"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "moatless_gateway_bundle_refusals_total"); err != nil {
		t.Fatal(err)
	}
	if resp, _ := tg.do(t, "GET", "/orders/1", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("with the bundle in force: %d", resp.StatusCode)
	}
}
