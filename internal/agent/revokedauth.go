package agent

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// revokedFile, in DataDir, lists the X.509 authorities (subject key IDs)
// that a bundle from the server held and a later one dropped: `moatless ca
// revoke`. The configured TrustBundle may still hold such an authority
// (it is a file an operator copied once); without this list a restarted
// node would trust it again for the server's certificate, and whoever
// holds the revoked key could pose as the server on the node's first
// connection after a restart.
const revokedFile = "revoked-authorities.json"

// Bounds of revokedFile. A revoked authority is one CA key rotated out or
// revoked: thousands take decades of rotations.
const (
	maxRevokedAuthorities = 4096
	maxSKIHexLen          = 128 // 64 bytes: SHA-1 SKIs are 20, SHA-256 32
	maxRevokedFileSize    = 1 << 20
)

type revokedState struct {
	// X509Authorities are subject key IDs, lower-case hex, sorted.
	X509Authorities []string `json:"revoked_x509_authorities"`
}

// parseRevoked reads revokedFile strictly: known fields only, at most
// maxRevokedAuthorities entries, each non-empty lower-case hex of at most
// maxSKIHexLen characters, no trailing data.
func parseRevoked(raw []byte) ([]string, error) {
	if len(raw) > maxRevokedFileSize {
		return nil, fmt.Errorf("larger than %d bytes", maxRevokedFileSize)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var st revokedState
	if err := dec.Decode(&st); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("trailing data")
	}
	if st.X509Authorities == nil {
		return nil, errors.New("no revoked_x509_authorities")
	}
	if len(st.X509Authorities) > maxRevokedAuthorities {
		return nil, fmt.Errorf("%d authorities, at most %d", len(st.X509Authorities), maxRevokedAuthorities)
	}
	for i, ski := range st.X509Authorities {
		if ski == "" || len(ski) > maxSKIHexLen || ski != strings.ToLower(ski) {
			return nil, fmt.Errorf("authority %d: not a subject key ID", i)
		}
		if _, err := hex.DecodeString(ski); err != nil {
			return nil, fmt.Errorf("authority %d: %w", i, err)
		}
	}
	return st.X509Authorities, nil
}

// loadRevoked seeds held with the authorities revokedFile names, before
// the node builds its first pool: each one the configured TrustBundle
// holds stays untrusted until a bundle from the server holds it again.
//
// A file that cannot be read or parsed is refused, and the node fails
// safe: every TrustBundle authority the saved bundle does not hold counts
// as revoked (the server's latest bundle alone is trusted), and the next
// pool rewrites the file with that set. With no saved bundle either there
// is nothing to fall back on, and Attest fails with what to do.
func (n *Node) loadRevoked() error {
	path := filepath.Join(n.cfg.DataDir, revokedFile)
	raw, err := readFileLimit(path, maxRevokedFileSize)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var skis []string
	if err == nil {
		skis, err = parseRevoked(raw)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.held == nil {
		n.held = map[string]bool{}
	}
	if err == nil {
		for _, ski := range skis {
			n.held[ski] = true
		}
		n.revokedKey = strings.Join(skis, ",")
		return nil
	}
	saved := n.savedBundle()
	if saved == nil {
		return fmt.Errorf("agent: %s is damaged (%v) and the data directory holds no trust bundle to fall back on; check that the trust bundle given (--trust-bundle) holds no revoked CA, then remove the file", path, err)
	}
	n.log.Error("the list of revoked CA authorities in the data directory is damaged; trusting only the authorities of the saved bundle for the server until the server's bundle holds others", "file", path, "error", err)
	in := authoritiesOf(saved).present
	for _, c := range n.cfg.TrustBundle {
		if ski := hex.EncodeToString(c.SubjectKeyId); len(c.SubjectKeyId) > 0 && !in[ski] {
			n.held[ski] = true
		}
	}
	n.revokedKey = "\x00damaged" // rewritten by the next pool
	return nil
}

// persistRevokedLocked writes revoked, the authorities held and dropped
// (sorted), to revokedFile when it changed. Past maxRevokedAuthorities
// the ones the configured TrustBundle holds are kept first: only those
// change what the node trusts. n.mu is held; the write comes before the
// bundle that dropped an authority is persisted, so a crash between the
// two never leaves a saved bundle without it and no record of it.
func (n *Node) persistRevokedLocked(revoked []string) {
	if n.cfg.DataDir == "" {
		return
	}
	if len(revoked) > maxRevokedAuthorities {
		given := map[string]bool{}
		for _, c := range n.cfg.TrustBundle {
			given[hex.EncodeToString(c.SubjectKeyId)] = true
		}
		slices.SortStableFunc(revoked, func(a, b string) int {
			switch {
			case given[a] && !given[b]:
				return -1
			case given[b] && !given[a]:
				return 1
			}
			return 0
		})
		n.log.Warn("more revoked CA authorities than the data directory keeps; forgetting some the trust bundle given does not hold", "kept", maxRevokedAuthorities, "revoked", len(revoked))
		revoked = revoked[:maxRevokedAuthorities]
		slices.Sort(revoked)
	}
	key := strings.Join(revoked, ",")
	if key == n.revokedKey {
		return
	}
	raw, err := json.Marshal(revokedState{X509Authorities: revoked})
	if err == nil {
		err = writeFileAtomic(filepath.Join(n.cfg.DataDir, revokedFile), raw)
	}
	if err != nil {
		n.log.Error("cannot persist the revoked CA authorities; after a restart the trust bundle given may trust them again", "error", err)
		return
	}
	n.revokedKey = key
}

// readFileLimit reads at most limit bytes of path; a longer file is an
// error.
func readFileLimit(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(raw)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return raw, nil
}
