package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/moatless/moatless/internal/config"
)

// serverTrustPath is the trust bundle file that verifies the server: the
// file given by --cacert (cacert), else MOATLESS_CACERT, else
// DATA_DIR/bundle.pem.
func serverTrustPath(cacert string, getenv func(string) string) string {
	return firstNonEmpty(cacert, getenv("MOATLESS_CACERT"), filepath.Join(config.DefaultDataDir(getenv), "bundle.pem"))
}

// reachError explains why a request to the server at base failed. A
// server that answered with a certificate the bundle does not vouch for
// is running: asking whether it runs would send the user the wrong way,
// so certificate failures name the bundle used and what to set instead.
func reachError(base, bundle string, err error) error {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
	)
	switch {
	case errors.As(err, &unknown):
		return fmt.Errorf("the server's certificate at %s does not chain to the given bundle (%s): %w (set --cacert or MOATLESS_CACERT to that server's DATA_DIR/bundle.pem)", base, bundle, err)
	case errors.As(err, &hostname):
		return fmt.Errorf("the server's certificate at %s is not for that address: %w (use an address the certificate names, or add it to the server's server_names)", base, err)
	case errors.As(err, &invalid):
		return fmt.Errorf("the server's certificate at %s is not valid: %w (check the clocks of both machines)", base, err)
	case errors.As(err, &verify):
		return fmt.Errorf("the server's certificate at %s does not verify against the given bundle (%s): %w", base, bundle, err)
	}
	return fmt.Errorf("cannot reach the server at %s: %w (is \"moatless server\" running? set --addr or MOATLESS_ADDR)", base, err)
}
