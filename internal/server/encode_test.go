package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/moatless/moatless/internal/wire"
)

// The shared heartbeat line is byte for byte what json.Marshal writes, at
// every version, also when streams at different versions interleave.
func TestHeartbeatLineMatchesWire(t *testing.T) {
	s := fuzzServer()
	for _, v := range []uint64{0, 1, 7, 1, 1 << 62, math.MaxInt64, math.MaxUint64, 7} {
		want, _ := json.Marshal(wire.Update{Version: v, Heartbeat: true})
		want = append(want, '\n')
		for range 2 {
			if got := s.heartbeatAt(v); !bytes.Equal(got, want) {
				t.Fatalf("version %d: %q, want %q", v, got, want)
			}
		}
	}
}

func TestSharedLines(t *testing.T) {
	line := []byte(`{"version":2,"policies":{}}` + "\n")
	tests := []struct {
		name      string
		encode    func() ([]byte, error)
		want      []byte
		wantErr   bool
		wantCalls int64 // encodings for 2 rounds of 50 concurrent gets
	}{
		{"line_encoded_once", func() ([]byte, error) { return line, nil }, line, false, 1},
		{"nothing_to_send_is_remembered", func() ([]byte, error) { return nil, nil }, nil, false, 1},
		// A failed encoding (a store read, say) is not cached: the
		// next stream tries again.
		{"error_not_cached", func() ([]byte, error) { return nil, errors.New("store down") }, nil, true, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c sharedLines
			var calls atomic.Int64
			for range 2 {
				var wg sync.WaitGroup
				for range 50 {
					wg.Go(func() {
						got, err := c.get(lineKey{since: 1, version: 2}, func() ([]byte, error) {
							calls.Add(1)
							return tt.encode()
						})
						if (err != nil) != tt.wantErr || !bytes.Equal(got, tt.want) {
							t.Errorf("get: %q, %v", got, err)
						}
					})
				}
				wg.Wait()
			}
			if n := calls.Load(); n != tt.wantCalls {
				t.Fatalf("encoded %d times, want %d", n, tt.wantCalls)
			}
		})
	}
}

// The cache stays bounded and keeps answering, one key per version.
func TestSharedLinesBounded(t *testing.T) {
	var c sharedLines
	for v := range uint64(10 * maxSharedLines) {
		k := lineKey{since: v, version: v + 1}
		want := []byte{byte(v)}
		for range 2 {
			got, err := c.get(k, func() ([]byte, error) { return want, nil })
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("version %d: %q, %v", v, got, err)
			}
		}
		n := 0
		c.m.Range(func(any, any) bool { n++; return true })
		if n > maxSharedLines {
			t.Fatalf("%d lines cached, at most %d", n, maxSharedLines)
		}
	}
}
