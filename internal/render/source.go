package render

import (
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// x509Source adapts go-spiffe's X509Source (which also reports updates).
type x509Source struct{ *workloadapi.X509Source }

func (s x509Source) GetX509SVID() (*x509svid.SVID, error) { return s.X509Source.GetX509SVID() }
func (s x509Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.X509Source.GetX509BundleForTrustDomain(td)
}
func (s x509Source) Updated() <-chan struct{} { return s.X509Source.Updated() }
