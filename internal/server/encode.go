package server

import (
	"encoding/json"
	"strconv"
	"sync"
	"sync/atomic"

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

// A change wakes every stream at once and most of them were at the same
// version, so most send the very same line: the sections that changed,
// none of them per node. Those lines are encoded once, by the first stream
// that needs one, and the others write the same bytes. A heartbeat is the
// same line for every stream at one version too.

// lineKey names an update line that is the same for every stream: the
// changes after since up to version, when no entries changed in between.
type lineKey struct{ since, version uint64 }

// sharedLine is one encoded update line; nil when nothing the streams
// send changed (a change that concerned only entries of no node, say).
type sharedLine struct{ line []byte }

// sharedLines caches update lines by lineKey. Lookups are lock free: ten
// thousand streams woken at once read it together.
type sharedLines struct {
	m sync.Map // lineKey → *sharedLine
	n atomic.Int64
	// build serialises the encoding of a missing line, so the streams
	// that miss together encode it once.
	build sync.Mutex
}

// maxSharedLines bounds the cache: streams only ever ask for the newest
// few versions, and an evicted line is encoded again if asked for.
const maxSharedLines = 64

// get returns the line for k, calling encode once for it if absent.
func (c *sharedLines) get(k lineKey, encode func() ([]byte, error)) ([]byte, error) {
	if v, ok := c.m.Load(k); ok {
		return v.(*sharedLine).line, nil
	}
	c.build.Lock()
	defer c.build.Unlock()
	if v, ok := c.m.Load(k); ok {
		return v.(*sharedLine).line, nil
	}
	line, err := encode()
	if err != nil {
		return nil, err
	}
	if c.n.Add(1) > maxSharedLines {
		c.m.Clear()
		c.n.Store(1)
	}
	c.m.Store(k, &sharedLine{line: line})
	return line, nil
}

// heartbeatLine is the encoded heartbeat at one version.
type heartbeatLine struct {
	version uint64
	line    []byte
}

// heartbeatAt returns the heartbeat line for version, json.Marshal of
// wire.Update{Version: version, Heartbeat: true} and a newline, shared by
// every stream at that version: a heartbeat costs no encoding and no
// allocation.
func (s *Server) heartbeatAt(version uint64) []byte {
	if h := s.heartbeats.Load(); h != nil && h.version == version {
		return h.line
	}
	line := strconv.AppendUint([]byte(`{"version":`), version, 10)
	line = append(line, `,"heartbeat":true}`+"\n"...)
	s.heartbeats.Store(&heartbeatLine{version: version, line: line})
	return line
}
