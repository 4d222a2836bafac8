// Package secrets is the secrets service of the control plane: KV version
// 2, transit encryption, field-level encryption, dynamic PostgreSQL
// credentials with leases, and the authentication (SPIFFE identity over
// mTLS, JWT-SVID, AppRole, tokens) and access policies in front of them,
// behind an HTTP API shaped like HashiCorp Vault's so that Vault's
// official clients work against it unchanged.
//
// Every response uses Vault's envelope (request_id, lease_id, renewable,
// lease_duration, data, wrap_info, warnings, auth) and every error
// {"errors": [...]} with Vault's status codes. Everything is denied
// unless an access policy grants it. Every request is audited; audit
// records carry HMACs of secret values (sys/audit-hash computes the same
// HMAC for a value an operator holds), never the values.
//
// Lifecycle: New(Config) prepares the service sealed; Unseal* gives it
// the root key; Handler serves; Tick (called by the server's maintenance
// loop) revokes expired leases and tokens.
package secrets

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"golang.org/x/time/rate"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/secrets/barrier"
	"github.com/moatless/moatless/internal/store"
)

// Auditor records audit events, in a store transaction when the change
// and its record must commit together (audit.StoreSink).
type Auditor interface {
	Append(ctx context.Context, ev audit.Event) error
	AppendTx(ctx context.Context, tx *sql.Tx, evs ...audit.Event) error
}

// Peer is the verified mTLS identity of a request.
type Peer struct {
	SPIFFEID string
	// NotAfter is when the presented X509-SVID expires; tokens from cert
	// login never outlive it.
	NotAfter time.Time
	// Authority is the ID of the CA authority that issued the
	// certificate (as `moatless ca show` lists it: the hex of its subject
	// key ID, the leaf's authority key ID): tokens obtained with it end
	// when that authority is revoked (Config.AuthorityRevoked).
	Authority string
}

// Config configures a Service. Store and Audit are required.
type Config struct {
	Store *store.DB
	Audit Auditor
	// Peer returns the request's verified, unrevoked X509-SVID identity,
	// or nil (no client certificate). An error means the certificate is
	// expired or revoked: the request is refused.
	Peer func(r *http.Request) (*Peer, error)
	// Admin reports whether the request carries the admin credential (the
	// admin token as a bearer or X-Vault-Token, or an admin client
	// certificate), and names the actor for the audit log.
	Admin func(r *http.Request) (actor string, ok bool)
	// Revoked reports whether a SPIFFE ID is revoked (tokens of a revoked
	// identity stop working at once).
	Revoked func(spiffeID string) bool
	// RevokedAuthorities lists the IDs of the CA authorities (X.509
	// authorities and JWT keys) that were revoked (`moatless ca revoke`):
	// a token obtained with an SVID one signed, and every token created
	// under that token, is refused from then on, and revoked with its
	// leases at the next Tick. nil: none is.
	RevokedAuthorities func() []string
	// JWTBundles validates JWT-SVIDs for jwt login (the CA's JWT keys).
	JWTBundles jwtbundle.Source
	// TrustDomain is the server's trust domain (JWT-SVIDs of others are
	// refused).
	TrustDomain string
	// Now is the clock; time.Now when nil.
	Now    func() time.Time
	Logger *slog.Logger
	// DefaultTokenTTL and MaxTokenTTL bound tokens (1h and 24h when 0).
	DefaultTokenTTL, MaxTokenTTL time.Duration
	// DefaultLeaseTTL and MaxLeaseTTL bound database leases (1h, 24h).
	DefaultLeaseTTL, MaxLeaseTTL time.Duration
	// RevokeBackoff is the first retry delay of a failed lease revocation,
	// doubled per attempt up to 10 minutes (5s when 0).
	RevokeBackoff time.Duration
}

// Service is the secrets service. Safe for concurrent use.
type Service struct {
	cfg     Config
	db      *store.DB
	now     func() time.Time
	log     *slog.Logger
	barrier barrier.Barrier
	// auditKey is the HMAC key for secret values in audit records, set at
	// unseal.
	auditKey atomic.Pointer[[]byte]
	sealMsg  atomic.Pointer[string]
	metrics  *metrics
	loginLim *rate.Limiter
	// anonLim bounds the audited refusals of requests without any
	// credential: each is an fsynced audit record. Both limiters run on
	// the injected clock.
	anonLim *rate.Limiter

	policies atomic.Pointer[policyCache]
	transit  sync.Map // name -> *transitEntry
	dbs      *dbPool
	unsealMu sync.Mutex
	// lastRotateCheck is when Tick last looked for keys due for rotation.
	lastRotateCheck atomic.Pointer[time.Time]

	// Test hooks, nil outside tests: testBeforeTokenDelete runs in a token
	// revocation before its tokens are deleted;
	// testBeforeLeaseWrite runs after a lease's database user is created,
	// before the lease is written; testLeaseTokenLocked runs in the
	// lease's transaction, just before the lease is written;
	// testTokenParentLocked runs in a child token's transaction once its
	// parent is locked and its tree counted, before the child is written.
	testBeforeTokenDelete func()
	testBeforeLeaseWrite  func()
	testLeaseTokenLocked  func()
	testTokenParentLocked func()
}

// New prepares a sealed service.
func New(c Config) (*Service, error) {
	if c.Store == nil || c.Audit == nil {
		return nil, errors.New("secrets: Store and Audit are required")
	}
	s := &Service{cfg: c, db: c.Store, now: c.Now, log: c.Logger}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.cfg.Peer == nil {
		s.cfg.Peer = func(*http.Request) (*Peer, error) { return nil, nil }
	}
	if s.cfg.Admin == nil {
		s.cfg.Admin = func(*http.Request) (string, bool) { return "", false }
	}
	if s.cfg.Revoked == nil {
		s.cfg.Revoked = func(string) bool { return false }
	}
	if s.cfg.RevokedAuthorities == nil {
		s.cfg.RevokedAuthorities = func() []string { return nil }
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&s.cfg.DefaultTokenTTL, time.Hour)
	def(&s.cfg.MaxTokenTTL, 24*time.Hour)
	def(&s.cfg.DefaultLeaseTTL, time.Hour)
	def(&s.cfg.MaxLeaseTTL, 24*time.Hour)
	def(&s.cfg.RevokeBackoff, 5*time.Second)
	msg := "the secrets service is sealed: start the server with its root key (--secrets-key-file, MOATLESS_SECRETS_ROOT_KEY or MOATLESS_SECRETS_PASSPHRASE) or run \"moatless secrets unseal\""
	s.sealMsg.Store(&msg)
	s.metrics = newMetrics()
	// Failed logins are bounded server-wide: each is an audit record.
	s.loginLim = rate.NewLimiter(20, 100)
	s.anonLim = rate.NewLimiter(50, 200)
	s.dbs = newDBPool()
	return s, nil
}

// Close releases database connections the service holds.
func (s *Service) Close() { s.dbs.closeAll() }

// Sealed reports whether the service is waiting for its root key.
func (s *Service) Sealed() bool { return s.barrier.Sealed() }

// SetSealedMessage replaces the 503 message (the server explains why it
// is sealed: no key configured, key file missing, ...).
func (s *Service) SetSealedMessage(m string) { s.sealMsg.Store(&m) }

// KeyringState reports whether the store already has a keyring and how
// its root key is derived.
func (s *Service) KeyringState(ctx context.Context) (exists bool, kdf barrier.KDF, err error) {
	_, k, err := s.db.SecretsKeyring(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return false, kdf, nil
	}
	if err != nil {
		return false, kdf, err
	}
	if k != "" {
		if err := json.Unmarshal([]byte(k), &kdf); err != nil {
			return true, kdf, fmt.Errorf("secrets: stored key derivation parameters are corrupt: %w", err)
		}
	}
	return true, kdf, nil
}

// UnsealKey unseals with a raw root key; on first use it creates the
// keyring. barrier.ErrWrongKey when the key does not open the keyring.
func (s *Service) UnsealKey(ctx context.Context, root []byte) error {
	return s.unseal(ctx, func(kdf *barrier.KDF, exists bool) ([]byte, error) {
		if exists && kdf.Alg != "" {
			return nil, errors.New("secrets: this store's keyring is sealed with a passphrase: give the passphrase, not a key")
		}
		*kdf = barrier.KDF{}
		return root, nil
	})
}

// UnsealPassphrase unseals with a passphrase stretched by argon2id (the
// parameters and salt are stored beside the keyring on first use).
func (s *Service) UnsealPassphrase(ctx context.Context, pass []byte) error {
	return s.unseal(ctx, func(kdf *barrier.KDF, exists bool) ([]byte, error) {
		if !exists {
			k, err := barrier.NewPassphraseKDF()
			if err != nil {
				return nil, err
			}
			*kdf = k
		}
		return kdf.DeriveKey(pass)
	})
}

func (s *Service) unseal(ctx context.Context, key func(kdf *barrier.KDF, exists bool) ([]byte, error)) error {
	s.unsealMu.Lock()
	defer s.unsealMu.Unlock()
	if !s.barrier.Sealed() {
		return nil
	}
	for range 2 {
		sealed, kdfJSON, err := s.db.SecretsKeyring(ctx)
		exists := err == nil
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("secrets: %w", err)
		}
		var kdf barrier.KDF
		if kdfJSON != "" {
			if err := json.Unmarshal([]byte(kdfJSON), &kdf); err != nil {
				return fmt.Errorf("secrets: stored key derivation parameters are corrupt: %w", err)
			}
		}
		root, err := key(&kdf, exists)
		if err != nil {
			return err
		}
		if len(root) != barrier.KeySize {
			return fmt.Errorf("secrets: a root key is %d bytes", barrier.KeySize)
		}
		var kr *barrier.Keyring
		if exists {
			kr, err = barrier.OpenKeyring(root, sealed)
			clear(root)
			if err != nil {
				s.metrics.unsealFailures.Inc()
				return err
			}
		} else {
			kr, err = barrier.NewKeyring(s.now())
			if err != nil {
				return err
			}
			blob, err := kr.SealKeyring(root)
			clear(root)
			if err != nil {
				return err
			}
			kb, _ := json.Marshal(kdf)
			if kdf.Alg == "" {
				kb = nil
			}
			won, err := s.db.CreateSecretsKeyring(ctx, blob, string(kb))
			if err != nil {
				return fmt.Errorf("secrets: %w", err)
			}
			if !won {
				continue // another replica created it: open theirs
			}
			s.log.Info("created the secrets keyring")
		}
		ak, err := kr.Derive("audit hmac")
		if err != nil {
			return err
		}
		s.auditKey.Store(&ak)
		s.barrier.Set(kr)
		s.log.Info("secrets service unsealed", "keyring_term", kr.Term())
		return nil
	}
	return errors.New("secrets: the keyring changed twice while unsealing; retry")
}

// hmacValue is what audit records carry for a secret value:
// "hmac-sha256:" and the hex HMAC under the audit key.
func (s *Service) hmacValue(v []byte) string {
	k := s.auditKey.Load()
	if k == nil {
		return ""
	}
	m := hmac.New(sha256.New, *k)
	m.Write(v)
	return "hmac-sha256:" + hex.EncodeToString(m.Sum(nil))
}

// accessorDetails are the audit details that hold an accessor.
var accessorDetails = []string{"token_accessor", "parent_accessor", "secret_id_accessor"}

// hmacAccessor is what audit records carry for a token or secret ID
// accessor: its hmacValue ("" while sealed, when there is no audit key).
// A value hashed already is left as it is.
func (s *Service) hmacAccessor(acc string) string {
	if acc == "" || strings.HasPrefix(acc, "hmac-sha256:") {
		return acc
	}
	return s.hmacValue([]byte(acc))
}

// hmacJSON HMACs the canonical JSON of v.
func (s *Service) hmacJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return s.hmacValue(b)
}

// Tick does the periodic work: revoke expired tokens (with their leases)
// and expired or revoke-requested leases, retrying failed revocations
// with backoff. Safe to call concurrently with requests.
func (s *Service) Tick(ctx context.Context) {
	if s.Sealed() {
		return
	}
	now := s.now()
	if accs, err := s.db.ExpiredSecretsTokens(ctx, now, 500); err == nil {
		for _, a := range accs {
			if err := s.revokeToken(ctx, a, "expired"); err != nil && !errors.Is(err, store.ErrNotFound) {
				s.log.Warn("revoke expired token", "err", err)
			}
		}
	}
	s.revokeLeasesOfRevokedIDs(ctx)
	s.revokeTokensOfRevokedAuthorities(ctx)
	s.revokeDueLeases(ctx)
	if last := s.lastRotateCheck.Load(); last == nil || now.Sub(*last) >= time.Minute {
		s.lastRotateCheck.Store(&now)
		s.autoRotate(ctx)
	}
	if err := s.db.PruneSecrets(ctx, now); err != nil {
		s.log.Warn("prune secrets", "err", err)
	}
	s.refreshLeaseGauge(ctx)
}

// newID returns a random identifier of n bytes, hex.
func newID(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("secrets: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// newUUID returns a random UUID (Vault's request and accessor IDs).
func newUUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic("secrets: crypto/rand failed: " + err.Error())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// remoteIP is the caller's IP address.
func remoteIP(r *http.Request) net.IP {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return net.ParseIP(host)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func trimPrefixes(s string, ps ...string) string {
	for _, p := range ps {
		s = strings.TrimPrefix(s, p)
	}
	return s
}
