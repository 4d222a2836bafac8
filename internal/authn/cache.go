package authn

import (
	"crypto/sha256"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/moatless/moatless/internal/policy"
)

// DefaultCacheSize is the default number of verified tokens remembered.
const DefaultCacheSize = 10000

const cacheShards = 16

// tokenKey is the SHA-256 of a token. The cache keys on the digest so that
// it holds no bearer token a heap dump could replay.
type tokenKey [sha256.Size]byte

func keyOf(token string) tokenKey {
	// Hash the string's bytes in place: the hit path must not copy the
	// token. sha256.Sum256 does not keep the slice.
	return sha256.Sum256(unsafe.Slice(unsafe.StringData(token), len(token)))
}

// cacheEntry is a verified token. Everything but ref is immutable after
// insertion, so readers need no lock once they hold the pointer.
type cacheEntry struct {
	key  tokenKey
	rule *compiledRule
	// keys is the key set the signature was checked against; if the
	// rule's set has changed since, the entry no longer counts.
	keys    *keySet
	iss     string // the token's iss
	sub     string // the token's sub, "" without
	expires int64  // Unix nanoseconds: the token's exp
	jti     string
	// x5t is the certificate thumbprint the token is bound to (cnf
	// x5t#S256), "" when unbound. Checked against every request's
	// Source.CertSHA256: the cache is per token, the binding per request.
	x5t string

	// The Auth fields a hit hands out; shared and read-only.
	principal  string
	audiences  []string
	presenter  string
	claims     map[string]any
	setHeaders map[string]string

	// refused are the rules with the token's issuer that were tried
	// before rule and refused it, each with the key set it had then.
	refused []refusal

	slot int         // index in the shard's ring
	ref  atomic.Bool // second-chance bit for the clock eviction

	// shared is the Auth auth last built for a request that carried the
	// token in one location (or for a rule that forwards it), handed out
	// again to the next such request rather than built anew.
	shared atomic.Pointer[sharedAuth]
}

// sharedAuth is an Auth for requests carrying the token at loc (nil for a
// forwarding rule, where the location changes nothing).
type sharedAuth struct {
	loc  *location
	auth *policy.Auth
}

// refusal is a rule that refused a token while it held key set keys.
type refusal struct {
	rule *compiledRule
	keys *keySet
}

// tokenCache is a bounded map from token digest to verified result,
// sharded to spread lock contention, with CLOCK (second chance) eviction:
// a hit costs a read lock and at most one atomic store, never a list
// reordering under a write lock as LRU would. Expired entries are the
// first evicted.
type tokenCache struct {
	shards [cacheShards]cacheShard
}

type cacheShard struct {
	mu   sync.RWMutex
	m    map[tokenKey]*cacheEntry
	ring []*cacheEntry
	hand int
	max  int
	_    [56]byte // 128 bytes per shard: no false sharing between shards
}

func newTokenCache(size int) *tokenCache {
	if size <= 0 {
		return nil
	}
	c := &tokenCache{}
	per := (size + cacheShards - 1) / cacheShards
	for i := range c.shards {
		c.shards[i].m = make(map[tokenKey]*cacheEntry)
		c.shards[i].max = per
	}
	return c
}

func (c *tokenCache) shard(k *tokenKey) *cacheShard { return &c.shards[k[0]%cacheShards] }

// get returns the live entry for k, or nil.
func (c *tokenCache) get(k *tokenKey, now int64) *cacheEntry {
	s := c.shard(k)
	s.mu.RLock()
	e := s.m[*k]
	s.mu.RUnlock()
	if e == nil || e.expires <= now {
		return nil
	}
	if !e.ref.Load() {
		e.ref.Store(true)
	}
	return e
}

// put inserts or replaces e, evicting when the shard is full.
func (c *tokenCache) put(e *cacheEntry, now int64) {
	s := c.shard(&e.key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.m[e.key]; old != nil {
		e.slot = old.slot
		s.ring[e.slot] = e
		s.m[e.key] = e
		return
	}
	if len(s.ring) < s.max {
		e.slot = len(s.ring)
		s.ring = append(s.ring, e)
		s.m[e.key] = e
		return
	}
	// Sweep: expired or unreferenced entries go; referenced ones lose
	// their bit and get one more round. Two passes always find a victim.
	for i := 0; i < 2*len(s.ring); i++ {
		v := s.ring[s.hand]
		if v.expires > now && v.ref.Load() {
			v.ref.Store(false)
			s.hand = (s.hand + 1) % len(s.ring)
			continue
		}
		break
	}
	v := s.ring[s.hand]
	delete(s.m, v.key)
	e.slot = s.hand
	s.ring[s.hand] = e
	s.m[e.key] = e
	s.hand = (s.hand + 1) % len(s.ring)
}

// len returns the number of entries (live or expired-but-unevicted).
func (c *tokenCache) len() int {
	if c == nil {
		return 0
	}
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
