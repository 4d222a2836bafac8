package server

import (
	"encoding/json"
	"sync"

	"github.com/moatless/moatless/internal/wire"
)

// The sections every stream sends alike (bundle, revocations, policies,
// risk) are encoded once per version, not once per stream: a change wakes every
// stream at once, and with thousands of streams and a large policy set the
// JSON encoding of identical sections was most of the push.

// sharedJSON caches the JSON of shared, read-only section values by
// identity: the revocations section of one snapshot, the policy set of one
// cache entry, the bundle of one sequence number. It keeps the values of
// the last few versions; an old one is encoded again if asked for.
type sharedJSON struct {
	mu sync.Mutex
	m  map[any][]byte
}

// maxSharedJSON bounds the cache; streams only ever ask for the newest
// few versions.
const maxSharedJSON = 32

func (c *sharedJSON) get(v any) ([]byte, error) {
	c.mu.Lock()
	b, ok := c.m[v]
	c.mu.Unlock()
	if ok {
		return b, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxSharedJSON {
		c.m = map[any][]byte{}
	}
	c.m[v] = b
	c.mu.Unlock()
	return b, nil
}

// encodeUpdate writes u as one NDJSON line, the same JSON object as
// json.Marshal(u) up to the order of its members, with the shared sections
// from s.shared. The values behind u's section pointers must be the shared
// ones, never modified after they were first sent.
func (s *Server) encodeUpdate(u wire.Update) ([]byte, error) {
	type section struct {
		name string
		v    any
		set  bool
	}
	shared := []section{
		{"bundle", u.Bundle, u.Bundle != nil},
		{"revocations", u.Revocations, u.Revocations != nil},
		{"policies", u.Policies, u.Policies != nil},
		{"risk", u.Risk, u.Risk != nil},
	}
	u.Bundle, u.Revocations, u.Policies, u.Risk = nil, nil, nil, nil
	b, err := json.Marshal(u) // version, flags, this node's entries
	if err != nil {
		return nil, err
	}
	b = b[:len(b)-1] // reopen the object
	for _, sec := range shared {
		if !sec.set {
			continue
		}
		raw, err := s.shared.get(sec.v)
		if err != nil {
			return nil, err
		}
		b = append(b, `,"`...)
		b = append(b, sec.name...)
		b = append(b, `":`...)
		b = append(b, raw...)
	}
	return append(b, '}', '\n'), nil
}

// cachedWireBundle is wireBundle built once per bundle sequence number,
// so every stream sends the same value (and sharedJSON encodes it once).
func (s *Server) cachedWireBundle() *wire.Bundle {
	seq, _ := s.ca.Bundle().SequenceNumber()
	if c := s.bundleCache.Load(); c != nil && c.seq == seq {
		return c.b
	}
	b := s.wireBundle()
	s.bundleCache.Store(&bundleCacheEntry{seq: b.SequenceNumber, b: b})
	return b
}

type bundleCacheEntry struct {
	seq uint64
	b   *wire.Bundle
}
