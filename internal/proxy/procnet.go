package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Limits of reading /proc/net/tcp and /proc/net/tcp6. A line is about 150
// bytes (tcp) or 180 (tcp6); 64 MiB is some 400,000 sockets, far more than
// a host that still wants this fallback over sock_diag should have.
const (
	maxProcNetLine  = 512
	maxProcNetBytes = 64 << 20
)

// TCP states as the kernel numbers them (include/net/tcp_states.h).
const (
	tcpEstablished = 0x01
	tcpTimeWait    = 0x06
	tcpListen      = 0x0A
	tcpMaxState    = 0x0D // TCP_BOUND_INACTIVE, the last one
)

// errProcNetFormat is wrapped by every error about the text of the table:
// a kernel whose format we do not know is refused, not guessed at.
var errProcNetFormat = errors.New("unexpected /proc/net/tcp format")

// tcpSocket is one TCP socket as /proc/net/tcp and sock_diag describe it:
// the fields the outbound caller check needs.
type tcpSocket struct {
	local, remote netip.AddrPort
	state         uint8
	// uid owns the socket: the fsuid of the process that created it. A
	// TIME_WAIT or request socket shows 0, so inode must be checked too.
	uid uint32
	// inode is the socket's inode, 0 once no process holds it (closed,
	// TIME_WAIT, embryonic).
	inode uint64
}

// procTCPHeader is the start of the header line, field by field; tcp6
// calls the third column remote_address.
var procTCPHeader = [][]byte{
	[]byte("sl"), []byte("local_address"), nil, []byte("st"), []byte("tx_queue"), []byte("rx_queue"),
	[]byte("tr"), []byte("tm->when"), []byte("retrnsmt"), []byte("uid"), []byte("timeout"), []byte("inode"),
}

// scanProcNetTCP reads a /proc/net/tcp table (v6 false) or tcp6 table (v6
// true) from r and calls fn for each socket until fn returns false. The
// kernel prints each address word in the CPU's byte order: order is
// binary.NativeEndian for the live tables (tests pass the order their
// vectors were captured in). Parsing is strict: a header or line that
// does not have exactly the expected fields, widths and digits ends the
// scan with an error wrapping errProcNetFormat, as do a line longer than
// maxProcNetLine and a table longer than limit bytes. fn sees every
// entry before the one that failed.
func scanProcNetTCP(r io.Reader, v6 bool, order binary.ByteOrder, limit int64, fn func(tcpSocket) bool) error {
	// The byte order as a bool: an interface call would move every
	// parsed address to the heap.
	little := order.Uint16([]byte{1, 0}) == 1
	br := bufio.NewReaderSize(io.LimitReader(r, limit+1), 64<<10)
	var read int64
	for n := 0; ; n++ {
		line, err := br.ReadSlice('\n')
		read += int64(len(line))
		if read > limit {
			return fmt.Errorf("proxy: %w: table longer than %d bytes", errProcNetFormat, limit)
		}
		if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxProcNetLine {
			return fmt.Errorf("proxy: %w: line %d longer than %d bytes", errProcNetFormat, n+1, maxProcNetLine)
		}
		if err == io.EOF {
			if len(line) != 0 {
				return fmt.Errorf("proxy: %w: line %d not terminated", errProcNetFormat, n+1)
			}
			if n == 0 {
				return fmt.Errorf("proxy: %w: no header", errProcNetFormat)
			}
			return nil
		}
		if err != nil {
			return err
		}
		line = line[:len(line)-1]
		if n == 0 {
			if err := checkProcTCPHeader(line); err != nil {
				return err
			}
			continue
		}
		e, err := parseProcTCPLine(line, v6, little)
		if err != nil {
			return fmt.Errorf("proxy: %w: line %d: %v", errProcNetFormat, n+1, err)
		}
		if !fn(e) {
			return nil
		}
	}
}

func checkProcTCPHeader(line []byte) error {
	f := bytes.Fields(line)
	if len(f) < len(procTCPHeader) {
		return fmt.Errorf("proxy: %w: header %q", errProcNetFormat, line)
	}
	for i, want := range procTCPHeader {
		ok := bytes.Equal(f[i], want)
		if want == nil {
			ok = string(f[i]) == "rem_address" || string(f[i]) == "remote_address"
		}
		if !ok {
			return fmt.Errorf("proxy: %w: header %q", errProcNetFormat, line)
		}
	}
	return nil
}

// parseProcTCPLine parses one socket line of the table: the kernel's
//
//	"%4d: %08X:%04X %08X:%04X %02X %08X:%08X %02X:%08lX %08X %5u %8d %lu ..."
//
// (tcp6: 32 hex digits per address). Fields after the inode differ by
// socket kind and kernel version and are not read.
func parseProcTCPLine(line []byte, v6, little bool) (tcpSocket, error) {
	var e tcpSocket
	var fa [10][]byte
	f := fa[:]
	if !fieldsN(line, f) {
		return e, errors.New("fewer than 10 fields")
	}
	sl, ok := bytes.CutSuffix(f[0], []byte(":"))
	if _, dec := parseDec(sl, 32); !ok || !dec {
		return e, fmt.Errorf("slot %q", f[0])
	}
	var err error
	if e.local, err = parseProcTCPAddr(f[1], v6, little); err != nil {
		return e, fmt.Errorf("local address: %v", err)
	}
	if e.remote, err = parseProcTCPAddr(f[2], v6, little); err != nil {
		return e, fmt.Errorf("remote address: %v", err)
	}
	st, ok := hexN(f[3], 2, 2)
	if !ok || st == 0 || st > tcpMaxState {
		return e, fmt.Errorf("state %q", f[3])
	}
	e.state = uint8(st)
	if !hexPair(f[4], 8, 8, 8, 8) {
		return e, fmt.Errorf("queues %q", f[4])
	}
	// tm->when is an unsigned long: an expired timer's negative delta
	// prints as 16 digits on 64-bit kernels.
	if !hexPair(f[5], 2, 2, 8, 16) {
		return e, fmt.Errorf("timer %q", f[5])
	}
	if _, ok := hexN(f[6], 8, 8); !ok {
		return e, fmt.Errorf("retransmits %q", f[6])
	}
	uid, ok := parseDec(f[7], 32)
	if !ok {
		return e, fmt.Errorf("uid %q", f[7])
	}
	e.uid = uint32(uid)
	timeout := f[8]
	if len(timeout) > 1 && timeout[0] == '-' {
		timeout = timeout[1:]
	}
	if _, ok := parseDec(timeout, 32); !ok {
		return e, fmt.Errorf("timeout %q", f[8])
	}
	if e.inode, ok = parseDec(f[9], 64); !ok {
		return e, fmt.Errorf("inode %q", f[9])
	}
	return e, nil
}

// parseProcTCPAddr parses "0100007F:1F90": the address as 32-bit words in
// the kernel's byte order (little-endian or not), then the port in hex.
func parseProcTCPAddr(b []byte, v6, little bool) (netip.AddrPort, error) {
	n := 8
	if v6 {
		n = 32
	}
	if len(b) != n+5 || b[n] != ':' {
		return netip.AddrPort{}, fmt.Errorf("%q", b)
	}
	port, ok := hexN(b[n+1:], 4, 4)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%q", b)
	}
	var ip [16]byte
	for w := 0; w < n/8; w++ {
		v, ok := hexN(b[8*w:8*w+8], 8, 8)
		if !ok {
			return netip.AddrPort{}, fmt.Errorf("%q", b)
		}
		if little {
			binary.LittleEndian.PutUint32(ip[4*w:], uint32(v))
		} else {
			binary.BigEndian.PutUint32(ip[4*w:], uint32(v))
		}
	}
	if v6 {
		return netip.AddrPortFrom(netip.AddrFrom16(ip), uint16(port)), nil
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[:4])), uint16(port)), nil
}

// fieldsN fills f with the first len(f) space-separated fields of line
// and reports whether it had that many. Only spaces separate fields: the
// kernel prints no tabs.
func fieldsN(line []byte, f [][]byte) bool {
	for i := range f {
		line = bytes.TrimLeft(line, " ")
		if len(line) == 0 {
			return false
		}
		j := bytes.IndexByte(line, ' ')
		if j < 0 {
			j = len(line)
		}
		f[i], line = line[:j], line[j:]
	}
	return true
}

// hexN parses b as an upper-case hex number of min to max digits (the
// kernel prints %X).
func hexN(b []byte, min, max int) (uint64, bool) {
	if len(b) < min || len(b) > max {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uint64(c-'0')
		case c >= 'A' && c <= 'F':
			v = v<<4 | uint64(c-'A'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

// hexPair checks "HEX:HEX" with the digit counts given for each side.
func hexPair(b []byte, min1, max1, min2, max2 int) bool {
	a, c, ok := bytes.Cut(b, []byte(":"))
	if !ok {
		return false
	}
	_, ok1 := hexN(a, min1, max1)
	_, ok2 := hexN(c, min2, max2)
	return ok1 && ok2
}

// parseDec parses b as an unsigned decimal number that fits in bits.
func parseDec(b []byte, bits int) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	if bits < 64 && v >= 1<<bits {
		return 0, false
	}
	return v, true
}
