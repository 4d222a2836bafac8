package workload

import (
	"bytes"
	"testing"

	"golang.org/x/net/http2"
)

// frames builds the client preface followed by frames of the given types
// with the given payload lengths.
func frames(spec ...[2]int) []byte {
	var b bytes.Buffer
	b.WriteString(http2.ClientPreface)
	for _, s := range spec {
		l := s[1]
		b.Write([]byte{byte(l >> 16), byte(l >> 8), byte(l), byte(s[0]), 0, 0, 0, 0, 1})
		b.Write(make([]byte, l))
	}
	return b.Bytes()
}

func TestEarlyScan(t *testing.T) {
	const (
		data, headers, priority, rst, settings, push, ping, goaway, window, continuation = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
	)
	setup := frames([2]int{settings, 18}, [2]int{window, 4})
	withReq := append(append([]byte{}, setup...), frames([2]int{headers, 30})[24:]...)
	tests := []struct {
		name   string
		stream []byte
		left   int // bytes written before the binding
		want   bool
	}{
		{"nothing_early", withReq, 0, false},
		{"preface_only_early", withReq, 24, false},
		{"setup_frames_early_request_after", withReq, len(setup), false},
		{"request_header_begins_early", withReq, len(setup) + 1, true},
		{"request_entirely_early", withReq, len(withReq), true},
		{"ping_and_priority_early", frames([2]int{ping, 8}, [2]int{priority, 5}), 24 + 9 + 8 + 9 + 5, false},
		{"data_early", frames([2]int{data, 3}), 24 + 12, true},
		{"rst_stream_early", frames([2]int{rst, 4}), 24 + 1, true},
		{"push_promise_early", frames([2]int{push, 4}), 24 + 9, true},
		{"goaway_early", frames([2]int{goaway, 8}), 24 + 9, true},
		{"continuation_early", frames([2]int{continuation, 2}), 24 + 9, true},
		{"unknown_type_early", frames([2]int{0x42, 2}), 24 + 9, true},
		// A huge SETTINGS length skips its payload; the next header is
		// past the early region.
		{"big_settings_payload", frames([2]int{settings, 1 << 14}, [2]int{headers, 1}), 24 + 9 + 100, false},
		{"early_region_ends_mid_preface", withReq, 10, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, chunk := range []int{1, 3, 9, 1 << 20} {
				e := earlyScan{left: tc.left}
				got := false
				for b := tc.stream; len(b) > 0 && e.active(); {
					n := min(chunk, len(b))
					if e.feed(b[:n]) {
						got = true
					}
					b = b[n:]
				}
				if got != tc.want {
					t.Fatalf("chunks of %d: request before binding = %v, want %v", chunk, got, tc.want)
				}
			}
		})
	}
}

// FuzzEarlyScan: any stream, any early region, any way of cutting it into
// reads gives the same verdict as one read, and never panics.
func FuzzEarlyScan(f *testing.F) {
	f.Add(frames([2]int{4, 6}, [2]int{1, 20}), 40, 3)
	f.Add(frames([2]int{8, 4}), 24+13, 1)
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"), 26, 2)
	f.Fuzz(func(t *testing.T, stream []byte, left, chunk int) {
		if left < 0 || chunk <= 0 {
			return
		}
		whole := earlyScan{left: left}
		want := whole.active() && whole.feed(stream)
		e := earlyScan{left: left}
		got := false
		for b := stream; len(b) > 0 && e.active(); {
			n := min(chunk, len(b))
			if e.feed(b[:n]) {
				got = true
			}
			b = b[n:]
		}
		if got != want {
			t.Fatalf("chunks of %d: %v, one read: %v", chunk, got, want)
		}
	})
}
