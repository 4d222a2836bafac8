package server

// The secrets service (internal/secrets) wired into the control plane: it
// serves the Vault-shaped API under /v1/ on the server's listener, knows
// callers by the server's mTLS peer check and admin credential, records to
// the server's audit log, and is ticked by the maintenance loop (lease and
// token expiry). Its root key comes from the environment, a passphrase or
// a key file; without one it stays sealed and answers 503.

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/moatless/moatless/internal/secrets"
	"github.com/moatless/moatless/internal/secrets/barrier"
)

// SecretsKeyFile is the default root key file of the secrets service in
// the data directory, created on first start like the KEK.
const SecretsKeyFile = "secrets-key"

type secretsState struct {
	svc *secrets.Service
	// revoked wakes the maintenance loop to revoke the leases of SPIFFE
	// IDs revoked since (capacity one: a wake already pending covers the
	// next revocation too).
	revoked chan struct{}
}

// Secrets returns the secrets service (nil before New finished).
func (s *Server) Secrets() *secrets.Service {
	if s.secrets == nil {
		return nil
	}
	return s.secrets.svc
}

// initSecrets builds the secrets service, unseals it with the configured
// root key and mounts it on /v1/. A key that does not open the store's
// keyring fails the start with a message that says so; no key at all
// leaves the service sealed (503) until "moatless secrets unseal".
func (s *Server) initSecrets(ctx context.Context, c Config) error {
	svc, err := secrets.New(secrets.Config{
		Store: s.db, Audit: s.audit, Now: s.now, Logger: s.log.With("component", "secrets"),
		Peer: s.secretsPeer, Admin: s.secretsAdmin,
		Revoked: func(id string) bool { return s.revs.Load().revoked(id, "") },
		// Tokens obtained with an SVID of a revoked CA key end with it.
		RevokedAuthorities: func() []string { return s.ca.RevokedIDs() },
		JWTBundles:         caJWTBundles{s},
		TrustDomain:        s.td.Name(),
	})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.secrets = &secretsState{svc: svc, revoked: make(chan struct{}, 1)}
	for _, col := range svc.Collectors() {
		s.metrics.reg.MustRegister(col)
	}
	if err := s.unsealSecrets(ctx, c); err != nil {
		return err
	}
	s.mux.Handle("/v1/", svc)
	return nil
}

func (s *Server) unsealSecrets(ctx context.Context, c Config) error {
	svc := s.secrets.svc
	switch {
	case len(c.SecretsRootKey) > 0:
		k, err := barrier.ParseKey(c.SecretsRootKey)
		if err != nil {
			return fmt.Errorf("server: secrets root key (MOATLESS_SECRETS_ROOT_KEY): %w", err)
		}
		if err := svc.UnsealKey(ctx, k); err != nil {
			return fmt.Errorf("server: secrets root key (MOATLESS_SECRETS_ROOT_KEY): %w", err)
		}
		return nil
	case len(c.SecretsPassphrase) > 0:
		if err := svc.UnsealPassphrase(ctx, c.SecretsPassphrase); err != nil {
			return fmt.Errorf("server: secrets passphrase: %w", err)
		}
		return nil
	}
	path := s.cfg.SecretsKeyFile
	if path == "" {
		path = filepath.Join(s.cfg.DataDir, SecretsKeyFile)
	}
	b, err := readSecretFile(path, 1024)
	switch {
	case err == nil:
		k, err := barrier.ParseKey(b)
		clear(b)
		if err != nil {
			return fmt.Errorf("server: secrets key file %s: %w", path, err)
		}
		if err := svc.UnsealKey(ctx, k); err != nil {
			return fmt.Errorf("server: secrets key file %s: %w", path, err)
		}
		return nil
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("server: secrets key file: %w", err)
	}
	exists, kdf, err := svc.KeyringState(ctx)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if exists {
		s.sealedWithoutKey(kdf, path)
		return nil
	}
	// First start: create the key file (0600), like the KEK.
	beforeFirstSecretsKey()
	k, err := barrier.NewKey()
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if err := writeFileAtomic(path, []byte(base64.StdEncoding.EncodeToString(k)+"\n"), 0o600, true); err != nil {
		return fmt.Errorf("server: write secrets key file: %w", err)
	}
	err = svc.UnsealKey(ctx, k)
	if errors.Is(err, barrier.ErrWrongKey) {
		// Another replica of the same store created the keyring between
		// the look above and this one's create (replicas started together
		// on a new store): its root key opens the keyring, this one's
		// sealed nothing. Drop it and start sealed, as a replica started a
		// moment later would, instead of failing the start.
		os.Remove(path)
		s.log.Warn("another replica created the secrets keyring first; this one starts sealed", "key_file", path)
		_, kdf, err = svc.KeyringState(ctx)
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		s.sealedWithoutKey(kdf, path)
		return nil
	}
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.log.Info("created secrets root key", "path", path)
	return nil
}

// beforeFirstSecretsKey runs between finding the store without a keyring
// and creating this replica's root key: a test's seam for the replica
// that loses that race.
var beforeFirstSecretsKey = func() {}

// sealedWithoutKey leaves the secrets service sealed because the store
// has a keyring and this server was given no key to open it, with a 503
// message saying how to give one.
func (s *Server) sealedWithoutKey(kdf barrier.KDF, path string) {
	how := "restore " + path + ", set MOATLESS_SECRETS_ROOT_KEY, or run \"moatless secrets unseal\""
	if kdf.Alg != "" {
		how = "set MOATLESS_SECRETS_PASSPHRASE (or --secrets-passphrase-file) or run \"moatless secrets unseal --passphrase-file FILE\""
	}
	s.secrets.svc.SetSealedMessage("the secrets service is sealed: its root key was not given (" + how + ")")
	s.log.Warn("secrets service sealed: no root key", "key_file", path)
}

// secretsPeer is the request's verified X509-SVID, nil without one, and
// nil on a request a web page made (madeByAPage): a certificate in a
// browser is ambient, and a page of another site must not read, write or
// log in as the workload whose certificate the browser holds. Tokens
// travel in headers such a page cannot set, and still work.
func (s *Server) secretsPeer(r *http.Request) (*secrets.Peer, error) {
	if madeByAPage(r) {
		return nil, nil
	}
	c, err := s.peer(r)
	switch {
	case errors.Is(err, errNoClientCert):
		return nil, nil
	case err != nil:
		return nil, err
	}
	return &secrets.Peer{SPIFFEID: c.id.String(), NotAfter: c.leaf.NotAfter, Authority: hex.EncodeToString(c.leaf.AuthorityKeyId)}, nil
}

// secretsAdmin recognises the admin credential on a secrets request: the
// admin token as X-Vault-Token or bearer, or an admin certificate when no
// token is presented. Any other token is the secrets service's to check.
func (s *Server) secretsAdmin(r *http.Request) (string, bool) {
	tok := r.Header.Get("X-Vault-Token")
	if tok == "" {
		if a := r.Header.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
			tok = strings.TrimSpace(a[7:])
		}
	}
	if tok != "" {
		return "admin-token", strings.HasPrefix(tok, "mla_") && s.checkAdminToken(tok)
	}
	actor, status, _ := s.adminCert(r)
	if status != 0 {
		return "", false
	}
	return actor, true
}

// tickSecrets runs the secrets service's expiry and revocation work; the
// maintenance loop calls it on each pass (every poll interval, 1s by
// default), so a lease is revoked within about a second of its end.
func (s *Server) tickSecrets(ctx context.Context) {
	if s.secrets != nil {
		s.secrets.svc.Tick(ctx)
	}
}

// secretsRevocationsChanged asks the maintenance loop to revoke, without
// waiting for its next pass, the leases of the SPIFFE IDs just revoked:
// their database users go in the same moment as the identity's
// connections, not up to a poll interval later. It never blocks.
func (s *Server) secretsRevocationsChanged() {
	if s.secrets == nil {
		return
	}
	select {
	case s.secrets.revoked <- struct{}{}:
	default:
	}
}

// secretsRevoked is the channel secretsRevocationsChanged wakes (nil, so
// never ready, without a secrets service).
func (s *Server) secretsRevoked() <-chan struct{} {
	if s.secrets == nil {
		return nil
	}
	return s.secrets.revoked
}
