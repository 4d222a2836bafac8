package agent

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"golang.org/x/time/rate"

	"github.com/moatless/moatless/internal/wire"
	"github.com/moatless/moatless/internal/workload"
)

// signer is what the cache needs from the server: Node, or a fake in tests.
type signer interface {
	SignX509(ctx context.Context, reqs []wire.X509SVIDRequest) ([]wire.X509SVID, error)
	SignJWT(ctx context.Context, entryID string, audience []string) (*wire.SignJWTResponse, error)
}

const (
	// signBatch bounds the CSRs in one sign request (each is ~0.5 KB of
	// JSON; wire.MaxBodySize is 1 MiB).
	signBatch = 500
	// maxJWTCache bounds the cached JWT-SVIDs (entry × audience set), and
	// maxJWTCacheBytes their size (token and key). A workload chooses its
	// audiences, up to workload.MaxAudiences of workload.MaxAudienceLen
	// bytes each: some 40 KiB a token with its key, so the count alone
	// would let the workloads of a node make the agent hold hundreds of
	// MiB; a usual token takes one or two.
	maxJWTCache      = 10000
	maxJWTCacheBytes = 32 << 20
	// jwtShareRate and jwtShareBurst bound the new JWT-SVIDs one SPIFFE ID
	// may make the agent ask the server for: per second sustained, and at
	// once. The server's budget is per node (server.DefaultJWTSVIDRate
	// 100/s, burst 1,000), and any workload may ask for a token per
	// audience set it makes up: without a share, one workload could spend
	// the whole node's budget and leave every other one without new
	// JWT-SVIDs. A tenth each; tokens already cached are not counted.
	jwtShareRate  = 10
	jwtShareBurst = 100
)

// cachedX509 is a workload SVID and what it was signed for. Its expiry is
// svid.ExpiresAt (the leaf's NotAfter); rotateAt is kept because it also
// depends on when the SVID arrived (halfLife).
type cachedX509 struct {
	svid     *workload.X509SVID
	spiffeID string
	ttl      wire.Duration
	rotateAt time.Time
	// auths are the authorities the chain depends on (chainAuthorities),
	// gen the bundle generation its sign request was made under: it is
	// replaced at once when one of auths was tainted in a later one.
	auths []string
	gen   uint64
	// untrusted: it no longer verifies against the bundle (its authority
	// was revoked); replaced at once, served until then.
	untrusted bool
}

type cachedJWT struct {
	token    string
	kid      string // the key it is signed with: dropped when that is tainted or removed
	spiffeID string
	reuseTil time.Time // half life
	expires  time.Time
}

// Cache holds the node's workload SVIDs: it signs one for every entry
// parented by the node (keys generated here), rotates each at half life,
// drops revoked ones at once, and publishes snapshots to the Workload API.
// It implements workload.Source. Safe for concurrent use.
type Cache struct {
	signer signer
	log    *slog.Logger
	now    func() time.Time
	pub    workload.Publisher
	base   time.Duration
	maxB   time.Duration

	wake chan struct{}
	// synced is closed after the first sync pass that started once an
	// update from the server had been applied and signed everything it
	// had to: the Workload API holds early callers until then.
	synced     chan struct{}
	syncedOnce sync.Once

	mu             sync.Mutex
	bundle         *wire.Bundle
	td             spiffeid.TrustDomain
	x509Auth       []*x509.Certificate
	jwtBundle      *jwtbundle.Bundle
	entries        map[string]wire.Entry
	x509           map[string]*cachedX509 // by entry ID
	jwt            map[string]*cachedJWT
	jwtBytes       int                      // of jwt: len(key) + len(token) each (jwtSize)
	jwtMaxBytes    int                      // maxJWTCacheBytes (tests set less)
	jwtShare       map[string]*rate.Limiter // by SPIFFE ID
	revokedIDs     map[string]struct{}
	revokedSerials map[string]struct{}
	revocations    *wire.Revocations // as received: when and why
	// auth indexes the bundle in force; bundleGen counts the bundles
	// applied, and taintGen holds, for each tainted authority, the
	// generation that first named it: an SVID requested before that is
	// replaced at once, one requested after is not (the server signed it
	// knowingly; replacing it again would only loop).
	auth       *authorities
	bundleGen  uint64
	taintGen   map[string]uint64
	nodeID     spiffeid.ID
	nodeSerial string
	failures   int
	updates    uint64 // updates applied (updateApplied)

	// jwtChecked, set by tests only, runs in JWTSVID after a new token
	// was validated and before it is handed out: where a bundle change
	// races with the fetch.
	jwtChecked func()
}

// CacheConfig configures a Cache.
type CacheConfig struct {
	Logger *slog.Logger
	Now    func() time.Time
	// BackoffBase and BackoffMax bound signing retries. Defaults 500ms, 30s.
	BackoffBase, BackoffMax time.Duration
}

func newCache(s signer, cfg CacheConfig) *Cache {
	c := &Cache{
		signer: s, log: cfg.Logger, now: cfg.Now, base: cfg.BackoffBase, maxB: cfg.BackoffMax,
		wake: make(chan struct{}, 1), synced: make(chan struct{}),
		entries: map[string]wire.Entry{}, x509: map[string]*cachedX509{}, jwt: map[string]*cachedJWT{}, jwtShare: map[string]*rate.Limiter{},
		revokedIDs: map[string]struct{}{}, revokedSerials: map[string]struct{}{},
		auth: authoritiesOf(nil), taintGen: map[string]uint64{}, jwtMaxBytes: maxJWTCacheBytes,
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.base <= 0 {
		c.base = DefaultBackoffBase
	}
	if c.maxB <= 0 {
		c.maxB = DefaultBackoffMax
	}
	return c
}

// Synced implements workload.Syncer: it is closed once the cache holds
// what the first update from the server asked for.
func (c *Cache) Synced() <-chan struct{} { return c.synced }

// updateApplied records that an update from the server is in force (its
// entries, bundle and revocations were set) and wakes the sync loop.
func (c *Cache) updateApplied() {
	c.mu.Lock()
	c.updates++
	c.mu.Unlock()
	c.kick()
}

// State implements workload.Source.
func (c *Cache) State() (*workload.State, <-chan struct{}) { return c.pub.State() }

func (c *Cache) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// SetNode tells the cache the node's own identity: if it is revoked the
// node serves nothing.
func (c *Cache) SetNode(id spiffeid.ID, serial string) {
	c.mu.Lock()
	c.nodeID, c.nodeSerial = id, serial
	c.mu.Unlock()
}

// SetBundle applies a new trust bundle and publishes it to the Workload
// API before it returns. Cached JWT-SVIDs signed with a key it no longer
// holds or marks tainted are forgotten. The sync loop is woken to sign,
// at once rather than at half life and first in the queue, replacements
// for every X509-SVID that no longer verifies against it (its authority
// was revoked: removed from the bundle) and every one whose chain
// contains an authority it marks tainted (TaintedX509Authorities), in
// the batches and within the server's per-node budget of any renewal.
// Both kinds are served until their replacement arrives: a workload left
// without an SVID would get PermissionDenied on its stream, and
// go-spiffe's source then keeps the bundle it had, still trusting the
// revoked authority, until it retries a second later; served, the new
// bundle reaches it in this very update.
func (c *Cache) SetBundle(b wire.Bundle) {
	td, err := spiffeid.TrustDomainFromString(b.TrustDomain)
	if err != nil {
		c.log.Error("ignoring bundle with a bad trust domain", "error", err)
		return
	}
	var auth []*x509.Certificate
	for _, der := range b.X509Authorities {
		if cert, err := x509.ParseCertificate(der); err == nil {
			auth = append(auth, cert)
		}
	}
	jb := jwtbundle.New(td)
	for _, a := range b.JWTAuthorities {
		pub, err := x509.ParsePKIXPublicKey(a.PublicKey)
		if err != nil {
			continue
		}
		if err := jb.AddJWTAuthority(a.KeyID, pub); err != nil {
			c.log.Warn("skipping JWT authority", "key_id", a.KeyID, "error", err)
		}
	}
	view := authoritiesOf(&b)
	c.mu.Lock()
	c.bundleGen++
	for ski := range view.tainted {
		if _, seen := c.taintGen[ski]; !seen {
			c.taintGen[ski] = c.bundleGen
		}
	}
	for ski := range c.taintGen {
		if !view.tainted[ski] {
			delete(c.taintGen, ski)
		}
	}
	now := c.now()
	var untrusted, tainted int
	for _, x := range c.x509 {
		if x.untrusted || view.untrusted(x.svid.Chain, now) {
			x.untrusted = true
			untrusted++
		} else if c.mustReplaceLocked(x) {
			tainted++
		}
	}
	jwtDropped := 0
	for k, j := range c.jwt {
		if view.jwtKeyGone(j.kid) {
			c.dropJWTLocked(k)
			jwtDropped++
		}
	}
	c.bundle, c.td, c.x509Auth, c.jwtBundle, c.auth = &b, td, auth, jb, view
	c.publishLocked()
	c.mu.Unlock()
	if untrusted > 0 || tainted > 0 || jwtDropped > 0 {
		c.log.Warn("CA authority tainted or revoked: replacing the workload SVIDs it signed now",
			"x509_revoked_replacing", untrusted, "x509_tainted_replacing", tainted, "jwt_dropped", jwtDropped)
		c.kick()
	}
}

// mustReplaceLocked reports whether x must be replaced before its half
// life: it no longer verifies against the bundle, or it chains to an
// authority tainted by a bundle that came after x was requested.
func (c *Cache) mustReplaceLocked(x *cachedX509) bool {
	if x.untrusted {
		return true
	}
	for _, k := range x.auths {
		if g, ok := c.taintGen[k]; ok && x.gen < g {
			return true
		}
	}
	return false
}

// SetEntries replaces the node's entries; new and changed ones are signed
// by the sync loop, removed ones stop being served at once.
func (c *Cache) SetEntries(entries []wire.Entry) {
	c.mu.Lock()
	next := make(map[string]wire.Entry, len(entries))
	for _, e := range entries {
		if e.ID == "" {
			continue
		}
		next[e.ID] = e
	}
	for id := range c.x509 {
		if _, ok := next[id]; !ok {
			delete(c.x509, id)
		}
	}
	for k, j := range c.jwt {
		if e, ok := next[strings.SplitN(k, "\x00", 2)[0]]; !ok || e.SPIFFEID != j.spiffeID {
			c.dropJWTLocked(k)
		}
	}
	live := make(map[string]bool, len(next))
	for _, e := range next {
		live[e.SPIFFEID] = true
	}
	for id := range c.jwtShare {
		if !live[id] {
			delete(c.jwtShare, id)
		}
	}
	c.entries = next
	c.publishLocked()
	c.mu.Unlock()
	c.kick()
}

// SetRevocations applies the revocation list: revoked SPIFFE IDs and
// serials stop being served before this returns. It replaces the sets
// whole and nothing writes to them after: published snapshots share
// revokedIDs.
func (c *Cache) SetRevocations(r wire.Revocations) {
	c.mu.Lock()
	c.revocations = &r
	c.revokedIDs = make(map[string]struct{}, len(r.SPIFFEIDs))
	for _, id := range r.SPIFFEIDs {
		c.revokedIDs[id] = struct{}{}
	}
	c.revokedSerials = make(map[string]struct{}, len(r.Serials))
	for _, s := range r.Serials {
		c.revokedSerials[strings.ToLower(s.Serial)] = struct{}{}
	}
	for id, x := range c.x509 {
		_, badSerial := c.revokedSerials[x.svid.Serial]
		_, badID := c.revokedIDs[x.spiffeID]
		if badSerial || badID {
			delete(c.x509, id)
		}
	}
	for k, j := range c.jwt {
		if _, bad := c.revokedIDs[j.spiffeID]; bad {
			c.dropJWTLocked(k)
		}
	}
	c.publishLocked()
	c.mu.Unlock()
	c.kick()
}

// nodeRevokedLocked reports whether the node's own identity is revoked.
func (c *Cache) nodeRevokedLocked() bool {
	if c.nodeID.IsZero() {
		return false
	}
	_, badID := c.revokedIDs[c.nodeID.String()]
	_, badSerial := c.revokedSerials[c.nodeSerial]
	return badID || badSerial
}

// publishLocked builds and publishes a snapshot from the cache.
func (c *Cache) publishLocked() {
	if c.bundle == nil {
		return
	}
	now := c.now()
	var ids, revoked []*workload.Identity
	if !c.nodeRevokedLocked() {
		for _, e := range c.entries {
			sid, err := spiffeid.FromString(e.SPIFFEID)
			if err != nil {
				continue
			}
			if _, bad := c.revokedIDs[e.SPIFFEID]; bad {
				revoked = append(revoked, &workload.Identity{EntryID: e.ID, SPIFFEID: sid, Selectors: e.Selectors})
				continue
			}
			id := &workload.Identity{EntryID: e.ID, SPIFFEID: sid, Selectors: e.Selectors}
			if x := c.x509[e.ID]; x != nil && x.spiffeID == e.SPIFFEID && now.Before(x.svid.ExpiresAt) {
				id.X509 = x.svid
			}
			ids = append(ids, id)
		}
	}
	// A stable order: when two entries give a caller the same SPIFFE ID,
	// the same one wins every time.
	slices.SortFunc(ids, func(a, b *workload.Identity) int {
		return cmp.Or(cmp.Compare(a.SPIFFEID.String(), b.SPIFFEID.String()), cmp.Compare(a.EntryID, b.EntryID))
	})
	// The snapshot shares revokedIDs: SetRevocations replaces the map
	// whole and nothing writes to it after, so published snapshots stay
	// immutable without a copy per publish.
	st, err := workload.NewState(c.td, c.bundle.SequenceNumber, c.x509Auth, c.jwtBundle, ids, c.revokedIDs)
	if err != nil {
		c.log.Error("cannot build Workload API state", "error", err)
		return
	}
	st.Revoked, st.Revocations = revoked, c.revocations
	c.pub.Publish(st)
}

// Run keeps SVIDs signed and rotated until ctx ends.
func (c *Cache) Run(ctx context.Context) {
	for {
		next := c.syncOnce(ctx)
		var (
			timer <-chan time.Time
			t     *time.Timer
		)
		if !next.IsZero() {
			t = time.NewTimer(max(next.Sub(c.now()), 0))
			timer = t.C
		}
		select {
		case <-ctx.Done():
		case <-c.wake:
		case <-timer:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}

type pending struct {
	entry wire.Entry
	key   *ecdsa.PrivateKey
	req   wire.X509SVIDRequest
}

// syncOnce signs what needs signing and returns when to look again.
func (c *Cache) syncOnce(ctx context.Context) time.Time {
	c.mu.Lock()
	now := c.now()
	expired := false
	for id, x := range c.x509 {
		if !now.Before(x.svid.ExpiresAt) {
			delete(c.x509, id)
			expired = true
		}
	}
	if expired {
		c.publishLocked()
	}
	bundle := c.bundle
	gen := c.bundleGen
	afterUpdate := c.updates > 0
	var todo, later []wire.Entry
	if bundle != nil && !c.nodeRevokedLocked() {
		for _, e := range c.entries {
			if _, bad := c.revokedIDs[e.SPIFFEID]; bad {
				continue
			}
			x := c.x509[e.ID]
			switch {
			case x == nil || c.mustReplaceLocked(x):
				// Not served, or signed under a tainted authority:
				// these go first.
				todo = append(todo, e)
			case x.spiffeID != e.SPIFFEID || x.ttl != e.X509TTL || !now.Before(x.rotateAt):
				later = append(later, e)
			}
		}
	}
	todo = append(todo, later...)
	c.mu.Unlock()

	var failed error
	for chunk := range slices.Chunk(todo, signBatch) {
		batch := make([]pending, 0, len(chunk))
		reqs := make([]wire.X509SVIDRequest, 0, len(chunk))
		for _, e := range chunk {
			sid, err := spiffeid.FromString(e.SPIFFEID)
			if err != nil {
				c.log.Warn("entry has an invalid SPIFFE ID; not signing", "entry_id", e.ID, "error", err)
				continue
			}
			key, csr, err := newKeyAndCSR(sid)
			if err != nil {
				failed = err
				break
			}
			p := pending{entry: e, key: key, req: wire.X509SVIDRequest{EntryID: e.ID, CSR: csr}}
			batch = append(batch, p)
			reqs = append(reqs, p.req)
		}
		if len(reqs) == 0 {
			continue
		}
		svids, err := c.signer.SignX509(ctx, reqs)
		if err != nil {
			failed = err
			break
		}
		c.store(batch, svids, gen)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if failed != nil && ctx.Err() == nil {
		c.failures++
		wait := afterRetryAfter(failed, backoff(c.base, c.maxB, c.failures-1))
		c.log.Warn("signing workload SVIDs failed; serving cached ones and retrying", "error", failed, "in", wait.Round(time.Millisecond))
		return c.now().Add(wait)
	}
	c.failures = 0
	if afterUpdate && ctx.Err() == nil {
		c.syncedOnce.Do(func() { close(c.synced) })
	}
	// Wake for the next rotation, and for the next expiry so an SVID that
	// could not be rotated stops being served the moment it expires.
	var next time.Time
	for _, x := range c.x509 {
		for _, t := range []time.Time{x.rotateAt, x.svid.ExpiresAt} {
			if t.After(c.now()) && (next.IsZero() || t.Before(next)) {
				next = t
			}
		}
	}
	return next
}

// store checks each signed SVID against the bundle in force now (an
// authority revoked while the batch was signed is not trusted any more)
// and keeps the good ones. gen is the bundle generation the batch was
// requested under.
func (c *Cache) store(batch []pending, svids []wire.X509SVID, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	b := *c.bundle
	for i, p := range batch {
		w := svids[i]
		want, _ := spiffeid.FromString(p.entry.SPIFFEID)
		if w.EntryID != "" && w.EntryID != p.entry.ID {
			c.log.Error("server answered for the wrong entry; discarding", "entry_id", p.entry.ID, "got", w.EntryID)
			continue
		}
		svid, err := checkSVID(w, p.key, want, b, now)
		if err != nil {
			c.log.Error("server sent an unusable SVID; discarding", "entry_id", p.entry.ID, "error", err)
			continue
		}
		leaf := svid.Certificates[0]
		serial := strings.ToLower(leaf.SerialNumber.Text(16))
		if _, bad := c.revokedSerials[serial]; bad {
			continue
		}
		if e, ok := c.entries[p.entry.ID]; !ok || e.SPIFFEID != p.entry.SPIFFEID {
			continue // the entry changed or went away while we signed
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(p.key)
		if err != nil {
			continue
		}
		var chainDER []byte
		for _, cert := range svid.Certificates {
			chainDER = append(chainDER, cert.Raw...)
		}
		x := &cachedX509{
			svid:     &workload.X509SVID{Chain: svid.Certificates, ChainDER: chainDER, KeyDER: keyDER, Serial: serial, ExpiresAt: leaf.NotAfter},
			spiffeID: p.entry.SPIFFEID,
			ttl:      p.entry.X509TTL,
			rotateAt: halfLife(leaf, now),
			auths:    chainAuthorities(svid.Certificates),
			gen:      gen,
		}
		if ski := c.auth.taintedIn(x.auths); ski != "" && !c.mustReplaceLocked(x) {
			c.log.Error("the server signed a workload SVID under a tainted CA authority; serving it, but the server should sign with another (see moatless ca)", "entry_id", p.entry.ID, "authority", ski)
		}
		c.x509[p.entry.ID] = x
	}
	c.publishLocked()
}

// JWTSVID implements workload.Source: a cached token until its half life;
// past that a fresh one from the server, or the cached one until it
// expires if the server cannot be reached.
func (c *Cache) JWTSVID(ctx context.Context, id *workload.Identity, audience []string) (string, error) {
	aud := slices.Clone(audience)
	slices.Sort(aud)
	aud = slices.Compact(aud)
	key := id.EntryID + "\x00" + strings.Join(aud, "\x00")
	c.mu.Lock()
	cached := c.jwt[key]
	c.mu.Unlock()
	now := c.now()
	if cached != nil && now.Before(cached.reuseTil) {
		return cached.token, nil
	}
	if !c.jwtShareAllows(id.SPIFFEID.String(), now) {
		if cached != nil && now.Before(cached.expires) {
			return cached.token, nil
		}
		return "", fmt.Errorf("agent: %s: %w (%d at once, %d per second)", id.SPIFFEID, workload.ErrJWTSVIDShare, jwtShareBurst, jwtShareRate)
	}
	resp, err := c.signer.SignJWT(ctx, id.EntryID, audience)
	if err != nil {
		if cached != nil && now.Before(cached.expires) {
			c.log.Warn("serving a cached JWT-SVID past its half life; the server cannot be reached", "spiffe_id", cached.spiffeID, "error", err)
			return cached.token, nil
		}
		return "", err
	}
	c.mu.Lock()
	jb := c.jwtBundle
	c.mu.Unlock()
	if jb == nil {
		return "", errors.New("agent: no JWT bundle yet")
	}
	// Hand out only a token that validates for its audience against the
	// bundle workloads will check it with, for the entry's SPIFFE ID.
	tok, err := jwtsvid.ParseAndValidate(resp.Token, jb, audience[:1])
	if err != nil {
		return "", fmt.Errorf("agent: server sent an invalid JWT-SVID: %w", err)
	}
	if tok.ID != id.SPIFFEID {
		return "", fmt.Errorf("agent: server sent a JWT-SVID for %s, wanted %s", tok.ID, id.SPIFFEID)
	}
	for _, a := range audience {
		if !slices.Contains(tok.Audience, a) {
			return "", fmt.Errorf("agent: server sent a JWT-SVID without audience %q", a)
		}
	}
	issued := now
	if iat, ok := tok.Claims["iat"].(float64); ok {
		issued = time.Unix(int64(iat), 0)
	}
	entry := &cachedJWT{token: resp.Token, kid: tokenKID(resp.Token), spiffeID: id.SPIFFEID.String(), expires: tok.Expiry, reuseTil: issued.Add(tok.Expiry.Sub(issued) / 2)}
	if c.jwtChecked != nil {
		c.jwtChecked()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.jwtBundle != jb {
		// The bundle changed since the token was validated (`ca revoke`
		// of its key): it must validate against the one in force, which
		// workloads already hold, or it is not handed out.
		if _, err := jwtsvid.ParseAndValidate(resp.Token, c.jwtBundle, audience[:1]); err != nil {
			return "", fmt.Errorf("agent: the JWT-SVID the server sent no longer validates against the trust bundle: %w", err)
		}
	}
	if _, bad := c.revokedIDs[entry.spiffeID]; bad {
		return "", fmt.Errorf("agent: %s was revoked", entry.spiffeID)
	}
	if c.auth.jwtKeyGone(entry.kid) {
		// Signed with a key tainted (still trusted): handed out this
		// once, never cached, so the next fetch asks again.
		return resp.Token, nil
	}
	size := jwtSize(key, entry.token)
	c.dropJWTLocked(key)
	if len(c.jwt) >= maxJWTCache || c.jwtBytes+size > c.jwtMaxBytes {
		for k, j := range c.jwt {
			if !now.Before(j.expires) {
				c.dropJWTLocked(k)
			}
		}
		if len(c.jwt) >= maxJWTCache || c.jwtBytes+size > c.jwtMaxBytes {
			clear(c.jwt)
			c.jwtBytes = 0
		}
	}
	c.jwt[key] = entry
	c.jwtBytes += size
	return resp.Token, nil
}

// jwtSize is what a cached JWT-SVID counts against maxJWTCacheBytes.
func jwtSize(key, token string) int { return len(key) + len(token) }

// dropJWTLocked forgets the cached JWT-SVID under key, if any.
func (c *Cache) dropJWTLocked(key string) {
	if j, ok := c.jwt[key]; ok {
		c.jwtBytes -= jwtSize(key, j.token)
		delete(c.jwt, key)
	}
}

// jwtShareAllows takes one new JWT-SVID from the share of SPIFFE ID id
// (jwtShareRate, jwtShareBurst), or reports that it is spent.
func (c *Cache) jwtShareAllows(id string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	lim := c.jwtShare[id]
	if lim == nil {
		lim = rate.NewLimiter(jwtShareRate, jwtShareBurst)
		c.jwtShare[id] = lim
	}
	return lim.AllowN(now, 1)
}

// EarliestExpiry returns when the first served workload SVID expires
// (zero when none is served).
func (c *Cache) EarliestExpiry() time.Time {
	st, _ := c.pub.State()
	var t time.Time
	for _, id := range st.Identities {
		if id.X509 != nil && (t.IsZero() || id.X509.ExpiresAt.Before(t)) {
			t = id.X509.ExpiresAt
		}
	}
	return t
}

// backoff is the wait before retry number attempt: full jitter over an
// exponentially growing window, at least half of it.
func backoff(base, maxWait time.Duration, attempt int) time.Duration {
	window := base << min(attempt, 20)
	if window > maxWait || window <= 0 {
		window = maxWait
	}
	return window/2 + randN(window/2+1)
}

// Served returns how many workload X509-SVIDs are currently held.
func (c *Cache) Served() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.x509)
}
