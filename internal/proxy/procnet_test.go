package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Tables as a little-endian Linux 6.18 printed them (tcp pads each line
// with spaces to a fixed width; tcp6 does not).
const (
	procTCP4Header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     \n"
	procTCP4       = procTCP4Header +
		"   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1281 1 00000000010a228b 100 0 0 10 0                      \n" +
		"   1: 0100007F:C62F 0100007F:B240 01 00000000:00000000 00:00000000 00000000 65534        0 132198 1 00000000006c51d2 20 4 30 10 -1                   \n" +
		"   2: 0100007F:B240 0100007F:A79F 06 00000000:00000000 03:00000D69 00000000     0        0 0 3 00000000339e37ef                                      \n" +
		"   3: 0200007F:9561 0500007F:AE2A 04 00000000:00000001 01:FFFFFFFFFFFFFFF6 00000000  1000        0 0 1 00000000abfc5555 20 4 30 10 -1                 \n"
	procTCP6Header = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	procTCP6       = procTCP6Header +
		"   0: 00000000000000000000000000000000:DA13 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 211998 1 000000009c4c55d5 100 0 0 10 0\n" +
		"   1: 00000000000000000000000001000000:A452 00000000000000000000000001000000:DA13 01 00000000:00000000 00:00000000 00000000  1000        0 211999 2 000000003cf5bc63 20 0 0 10 -1\n" +
		"   2: 0000000000000000FFFF00000100007F:B714 0000000000000000FFFF00000100007F:DA13 01 00000000:00000000 00:00000000 00000000 65534        0 212001 2 0000000016b3f8ba 20 0 0 10 -1\n"
)

func scanAll(table string, v6 bool, limit int64) ([]tcpSocket, error) {
	var got []tcpSocket
	err := scanProcNetTCP(strings.NewReader(table), v6, binary.LittleEndian, limit, func(s tcpSocket) bool {
		got = append(got, s)
		return true
	})
	return got, err
}

func TestScanProcNetTCP(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		name  string
		table string
		v6    bool
		want  []tcpSocket
	}{
		{"tcp", procTCP4, false, []tcpSocket{
			{local: ap("0.0.0.0:2024"), remote: ap("0.0.0.0:0"), state: tcpListen, uid: 0, inode: 1281},
			{local: ap("127.0.0.1:50735"), remote: ap("127.0.0.1:45632"), state: tcpEstablished, uid: 65534, inode: 132198},
			{local: ap("127.0.0.1:45632"), remote: ap("127.0.0.1:42911"), state: tcpTimeWait, uid: 0, inode: 0},
			{local: ap("127.0.0.2:38241"), remote: ap("127.0.0.5:44586"), state: 0x04, uid: 1000, inode: 0},
		}},
		{"tcp6", procTCP6, true, []tcpSocket{
			{local: ap("[::]:55827"), remote: ap("[::]:0"), state: tcpListen, uid: 0, inode: 211998},
			{local: ap("[::1]:42066"), remote: ap("[::1]:55827"), state: tcpEstablished, uid: 1000, inode: 211999},
			{local: ap("[::ffff:127.0.0.1]:46868"), remote: ap("[::ffff:127.0.0.1]:55827"), state: tcpEstablished, uid: 65534, inode: 212001},
		}},
		{"header_only", procTCP4Header, false, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := scanAll(tc.table, tc.v6, maxProcNetBytes)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(tcpSocket{}), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Fatalf("-want +got:\n%s", diff)
			}
		})
	}
	t.Run("stops_when_told", func(t *testing.T) {
		n := 0
		err := scanProcNetTCP(strings.NewReader(procTCP4+"garbage\n"), false, binary.LittleEndian, maxProcNetBytes, func(tcpSocket) bool { n++; return n < 2 })
		if err != nil || n != 2 {
			t.Fatalf("n=%d err=%v", n, err)
		}
	})
}

func TestScanProcNetTCPRejects(t *testing.T) {
	line := "   1: 0100007F:C62F 0100007F:B240 01 00000000:00000000 00:00000000 00000000 65534        0 132198 1 00000000006c51d2 20 4 30 10 -1"
	bad := func(old, new string) string { return procTCP4Header + strings.Replace(line, old, new, 1) + "\n" }
	tests := []struct {
		name  string
		table string
		v6    bool
		limit int64
	}{
		{"empty", "", false, 0},
		{"no_header", line + "\n", false, 0},
		{"header_without_inode", "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout\n", false, 0},
		{"header_fields_reordered", "  sl  rem_address local_address st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n", false, 0},
		{"lower_case_hex", bad("0100007F:C62F", "0100007f:C62F"), false, 0},
		{"short_address", bad("0100007F:C62F", "100007F:C62F"), false, 0},
		{"ipv6_address_in_tcp", bad("0100007F:C62F", "00000000000000000000000001000000:C62F"), false, 0},
		{"ipv4_address_in_tcp6", procTCP6Header + strings.TrimPrefix(line, "") + "\n", true, 0},
		{"five_digit_port", bad("0100007F:C62F", "0100007F:0C62F"), false, 0},
		{"address_without_port", bad("0100007F:C62F", "0100007F"), false, 0},
		{"state_zero", bad(" 01 ", " 00 "), false, 0},
		{"state_unknown", bad(" 01 ", " 0E "), false, 0},
		{"state_one_digit", bad(" 01 ", " 1 "), false, 0},
		{"queues_without_colon", bad("00000000:00000000", "0000000000000000"), false, 0},
		{"timer_too_long", bad("00:00000000", "00:00000000000000000"), false, 0},
		{"retransmits_short", bad("00:00000000 00000000", "00:00000000 0000"), false, 0},
		{"uid_not_decimal", bad(" 65534 ", " 6553a "), false, 0},
		{"uid_negative", bad(" 65534 ", " -1 "), false, 0},
		{"uid_beyond_32_bits", bad(" 65534 ", " 4294967296 "), false, 0},
		{"timeout_not_decimal", bad("        0 132198", "        x 132198"), false, 0},
		{"inode_not_decimal", bad(" 132198 ", " 0x1 "), false, 0},
		{"inode_beyond_64_bits", bad(" 132198 ", " 18446744073709551616 "), false, 0},
		{"fields_missing", procTCP4Header + "   1: 0100007F:C62F 0100007F:B240 01 00000000:00000000 00:00000000 00000000 65534 0\n", false, 0},
		{"slot_without_colon", bad("   1: ", "   1 "), false, 0},
		{"tab_separated", bad("01 00000000:00000000", "01\t00000000:00000000"), false, 0},
		{"line_too_long", bad(" -1", " -1"+strings.Repeat(" ", maxProcNetLine)), false, 0},
		{"last_line_unterminated", procTCP4Header + line, false, 0},
		{"table_beyond_the_limit", procTCP4, false, int64(len(procTCP4)) - 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			limit := tc.limit
			if limit == 0 {
				limit = maxProcNetBytes
			}
			got, err := scanAll(tc.table, tc.v6, limit)
			if !errors.Is(err, errProcNetFormat) {
				t.Fatalf("got %v, %v; want an errProcNetFormat", got, err)
			}
		})
	}
}

// formatProcTCPAddr is parseProcTCPAddr's inverse.
func formatProcTCPAddr(ap netip.AddrPort, order binary.ByteOrder) string {
	var b []byte
	ip := ap.Addr().AsSlice()
	for w := 0; w < len(ip)/4; w++ {
		b = fmt.Appendf(b, "%08X", order.Uint32(ip[4*w:]))
	}
	return fmt.Sprintf("%s:%04X", b, ap.Port())
}

// FuzzScanProcNetTCP: any input is either refused or yields sockets that,
// printed back the kernel's way, parse to the same sockets; nothing
// panics, nothing is read past the limit.
func FuzzScanProcNetTCP(f *testing.F) {
	f.Add([]byte(procTCP4), false)
	f.Add([]byte(procTCP6), true)
	f.Add([]byte(procTCP4Header), false)
	f.Add([]byte(procTCP4+"   9: 0100007F:C62F 0100007F:B240 01 00000000:00000000 00:00000000 00000000 -1 0 1\n"), false)
	f.Add([]byte(procTCP6Header+"   0: 0000000000000000FFFF00000100007F:B714"), true)
	f.Fuzz(func(t *testing.T, data []byte, v6 bool) {
		got, err := scanAll(string(data), v6, 1<<16)
		if err != nil && !errors.Is(err, errProcNetFormat) {
			t.Fatalf("error not wrapping errProcNetFormat: %v", err)
		}
		if err != nil {
			return
		}
		header := procTCP4Header
		if v6 {
			header = procTCP6Header
		}
		var b strings.Builder
		b.WriteString(header)
		for i, s := range got {
			if s.local.Addr().Is6() != v6 || s.remote.Addr().Is6() != v6 {
				t.Fatalf("socket %d: %v → %v in a v6=%v table", i, s.local, s.remote, v6)
			}
			fmt.Fprintf(&b, "%4d: %s %s %02X 00000000:00000000 00:00000000 00000000 %5d %8d %d 1 0000000000000000\n",
				i, formatProcTCPAddr(s.local, binary.LittleEndian), formatProcTCPAddr(s.remote, binary.LittleEndian), s.state, s.uid, 0, s.inode)
		}
		again, err := scanAll(b.String(), v6, 1<<20)
		if err != nil {
			t.Fatalf("reprinted table refused: %v\n%s", err, b.String())
		}
		if diff := cmp.Diff(got, again, cmp.AllowUnexported(tcpSocket{}), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
			t.Fatalf("round trip -first +second:\n%s", diff)
		}
	})
}

// BenchmarkScanProcNetTCP is the parser alone over a 10,000-socket table
// held in memory (the kernel's time to produce the table is not in it).
func BenchmarkScanProcNetTCP(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(procTCP4Header)
	for i := range 10000 {
		fmt.Fprintf(&sb, "%4d: 0100007F:%04X 0100007F:3A99 06 00000000:00000000 03:000013D4 00000000     0        0 0 3 000000007b13987c                                      \n", i, i+1024)
	}
	table := sb.String()
	b.SetBytes(int64(len(table)))
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		if err := scanProcNetTCP(strings.NewReader(table), false, binary.LittleEndian, maxProcNetBytes, func(tcpSocket) bool { n++; return true }); err != nil || n != 10000 {
			b.Fatal(n, err)
		}
	}
}
