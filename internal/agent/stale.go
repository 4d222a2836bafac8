package agent

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/wire"
)

// ErrStaleState: the data directory holds a node SVID that the trust
// bundle given in the configuration does not vouch for — it was issued by
// another server or trust domain (a second tour, a server whose data
// directory was reset). Such an SVID is never used: the server would
// refuse it on every connection, forever. With a join token the node
// attests afresh and replaces it; without one the error names the file to
// remove.
var ErrStaleState = errors.New("agent: the data directory holds a node SVID from another server or trust domain")

// checkSavedState decides whether a node SVID loaded from the data
// directory (already checked against the bundle saved beside it) belongs
// to the server the configured TrustBundle authenticates. It does when the
// SVID chains to TrustBundle, or when the saved bundle still holds one of
// TrustBundle's authorities: the saved bundle came over the watch stream
// from a server that TrustBundle authenticated, so a CA rotated since the
// given bundle was copied keeps its SVIDs. Without a configured
// TrustBundle there is nothing to compare with and the saved state is
// used. Otherwise the answer wraps ErrStaleState and names the file.
func (n *Node) checkSavedState(s *x509svid.SVID, saved *wire.Bundle) error {
	if len(n.cfg.TrustBundle) == 0 {
		return nil
	}
	roots := x509.NewCertPool()
	given := map[string]bool{}
	for _, c := range n.cfg.TrustBundle {
		roots.AddCert(c)
		given[string(c.Raw)] = true
	}
	for _, der := range saved.X509Authorities {
		if given[string(der)] {
			return nil
		}
	}
	inter := x509.NewCertPool()
	for _, c := range s.Certificates[1:] {
		inter.AddCert(c)
	}
	_, err := s.Certificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: n.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err == nil {
		return nil
	}
	path := filepath.Join(n.cfg.DataDir, nodeFile)
	return fmt.Errorf("%w: %s (%s) does not chain to the trust bundle given (%v); start with a new join token to replace it, or remove %s",
		ErrStaleState, path, s.ID, err, path)
}

// vouchedFor reports whether the configured TrustBundle vouches for a
// bundle saved by an earlier run that left no node SVID beside it (the
// operator removed it to attest again): the saved bundle holds one of
// TrustBundle's authorities, or none is configured. A bundle of a server
// rebuilt since, which the operator now points TrustBundle at, is not
// held against that server's lower sequence number.
func (n *Node) vouchedFor(saved *wire.Bundle) bool {
	if len(n.cfg.TrustBundle) == 0 {
		return true
	}
	for _, c := range n.cfg.TrustBundle {
		for _, der := range saved.X509Authorities {
			if string(der) == string(c.Raw) {
				return true
			}
		}
	}
	return false
}

// noteRefusal records a watch stream that ended with the server refusing
// the node's credential (401, 403: revoked, unknown), for Refused.
func (n *Node) noteRefusal(err error) {
	var se *ServerError
	if errors.As(err, &se) && (se.Status == http.StatusUnauthorized || se.Status == http.StatusForbidden) {
		n.refused.Store(se)
	}
}

// Refused returns the server's refusal of this node's credential on its
// last watch stream attempt (for example "the client's SPIFFE ID or
// certificate is revoked: spiffe://… was revoked at … (reason: …)"), or
// nil once the server accepts a stream again. A refused node gets no
// updates; its readiness check reports this error.
func (n *Node) Refused() error {
	if se := n.refused.Load(); se != nil {
		return fmt.Errorf("%w (%s)", ErrNodeRejected, se)
	}
	return nil
}

// ErrDataDirInUse: another running agent or sidecar holds the data
// directory.
var ErrDataDirInUse = errors.New("agent: the data directory is in use")

// lockDir locks DataDir once, for the Node's lifetime (Close releases it).
func (n *Node) lockDir() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cfg.DataDir == "" || n.unlock != nil {
		return nil
	}
	release, err := lockDataDir(n.cfg.DataDir)
	if err != nil {
		return err
	}
	n.unlock = release
	return nil
}
