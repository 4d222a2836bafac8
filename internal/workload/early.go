package workload

// clientPrefaceLen is the length of the HTTP/2 client connection preface
// ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", RFC 9113 §3.4).
const clientPrefaceLen = 24

// earlyScan looks at the HTTP/2 frames a client sent before its connection
// was bound to its process (the first left bytes of the stream) and
// reports whether any of them could carry a request. Connection set-up
// frames are what a client sends before it has heard from the server:
// SETTINGS, WINDOW_UPDATE, PING and PRIORITY. Any other frame (HEADERS
// opens a call) whose header begins in that region is a request sent
// before the binding, possibly by the program the process ran before an
// execve. Frames that begin after the region are the bound image's (or
// marked by their writer). The bytes are gRPC's to parse and refuse;
// earlyScan only classifies, never fails, and holds no more than one frame
// header. A malformed preface stops the scan (the server refuses the
// connection anyway).
//
// feed must be called with the stream's bytes in order; the zero value
// scans nothing.
type earlyScan struct {
	left int // bytes of the early region not yet fed

	seen int // bytes fed so far
	hdr  [9]byte
	hdrN int    // bytes of the current frame header collected
	skip uint32 // payload bytes of the current frame still to pass
	done bool
}

// active reports whether more bytes need feeding.
func (e *earlyScan) active() bool { return !e.done && (e.left > 0 || e.hdrN > 0) }

// feed consumes the next bytes of the stream and reports whether a frame
// that may carry a request began before the binding. Once it has said so,
// or the early region is over, it scans no more.
func (e *earlyScan) feed(b []byte) bool {
	for len(b) > 0 && !e.done {
		switch {
		case e.seen < clientPrefaceLen:
			n := min(len(b), clientPrefaceLen-e.seen)
			e.advance(n)
			b = b[n:]
		case e.skip > 0:
			n := int(min(uint32(len(b)), e.skip))
			e.skip -= uint32(n)
			e.advance(n)
			b = b[n:]
		default:
			if e.hdrN == 0 && e.left == 0 {
				// The next frame begins after the binding.
				e.done = true
				return false
			}
			n := copy(e.hdr[e.hdrN:], b)
			e.hdrN += n
			e.advance(n)
			b = b[n:]
			if e.hdrN < len(e.hdr) {
				continue
			}
			e.hdrN = 0
			switch e.hdr[3] {
			case 0x4, 0x8, 0x6, 0x2: // SETTINGS, WINDOW_UPDATE, PING, PRIORITY
				e.skip = uint32(e.hdr[0])<<16 | uint32(e.hdr[1])<<8 | uint32(e.hdr[2])
			default:
				e.done = true
				return true
			}
		}
	}
	if e.left == 0 && e.hdrN == 0 {
		e.done = true
	}
	return false
}

func (e *earlyScan) advance(n int) {
	e.seen += n
	e.left = max(e.left-n, 0)
}
