package proxy

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
)

func TestInetDiagRequest(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		name          string
		local, remote netip.AddrPort
		want          string // hex, little-endian host
	}{
		{"ipv4", ap("127.0.0.2:50735"), ap("127.0.0.1:15001"),
			"48000000" + "1400" + "0100" + "07000000" + "00000000" + // nlmsghdr
				"02060000" + "ffffffff" + // AF_INET, TCP, every state
				"c62f" + "3a99" + "7f000002" + strings.Repeat("00", 12) + "7f000001" + strings.Repeat("00", 12) +
				"00000000" + "ffffffffffffffff"},
		{"ipv4_mapped_asked_as_ipv4", ap("[::ffff:127.0.0.2]:50735"), ap("127.0.0.1:15001"),
			"48000000" + "1400" + "0100" + "07000000" + "00000000" +
				"02060000" + "ffffffff" +
				"c62f" + "3a99" + "7f000002" + strings.Repeat("00", 12) + "7f000001" + strings.Repeat("00", 12) +
				"00000000" + "ffffffffffffffff"},
		{"ipv6", ap("[::1]:50735"), ap("[::1]:15001"),
			"48000000" + "1400" + "0100" + "07000000" + "00000000" +
				"0a060000" + "ffffffff" +
				"c62f" + "3a99" + strings.Repeat("00", 15) + "01" + strings.Repeat("00", 15) + "01" +
				"00000000" + "ffffffffffffffff"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := hex.EncodeToString(inetDiagRequest(binary.LittleEndian, 7, tc.local, tc.remote)); got != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

// diagReply is a kernel reply (little-endian host) describing one socket.
func diagReply(seq uint32, family, state byte, local, remote netip.AddrPort, uid, inode uint32) []byte {
	o := binary.LittleEndian
	b := make([]byte, nlmsgHdrLen+inetDiagMsgLen+8) // + an attribute the parser skips
	o.PutUint32(b[0:], uint32(len(b)))
	o.PutUint16(b[4:], sockDiagByFamily)
	o.PutUint32(b[8:], seq)
	m := b[nlmsgHdrLen:]
	m[0], m[1] = family, state
	putDiagSockID(m[4:], local, remote, family == linuxAFInet)
	o.PutUint32(m[64:], uid)
	o.PutUint32(m[68:], inode)
	return b
}

// diagError is a kernel NLMSG_ERROR reply with errno e.
func diagError(seq uint32, e int32) []byte {
	o := binary.LittleEndian
	b := make([]byte, nlmsgHdrLen+4+nlmsgHdrLen)
	o.PutUint32(b[0:], uint32(len(b)))
	o.PutUint16(b[4:], nlmsgError)
	o.PutUint32(b[8:], seq)
	o.PutUint32(b[nlmsgHdrLen:], uint32(-e))
	return b
}

func TestParseInetDiagReply(t *testing.T) {
	ap := netip.MustParseAddrPort
	client, server := ap("127.0.0.2:50735"), ap("127.0.0.1:15001")
	ok := diagReply(9, linuxAFInet, tcpEstablished, client, server, 65534, 4242)
	patch := func(b []byte, off int, v ...byte) []byte {
		c := append([]byte(nil), b...)
		copy(c[off:], v)
		return c
	}
	tests := []struct {
		name          string
		reply         []byte
		local, remote netip.AddrPort
		want          tcpSocket
		wantErr       string // "" for success; "ENOENT" for errNoSocket
	}{
		{"ipv4", ok, client, server, tcpSocket{local: client, remote: server, state: tcpEstablished, uid: 65534, inode: 4242}, ""},
		{"dual_stack_socket_for_an_ipv4_question", diagReply(9, linuxAFInet6, tcpEstablished, ap("[::ffff:127.0.0.2]:50735"), ap("[::ffff:127.0.0.1]:15001"), 1000, 7),
			client, server, tcpSocket{local: client, remote: server, state: tcpEstablished, uid: 1000, inode: 7}, ""},
		{"ipv6", diagReply(9, linuxAFInet6, tcpEstablished, ap("[::1]:1"), ap("[::1]:2"), 0, 5),
			ap("[::1]:1"), ap("[::1]:2"), tcpSocket{local: ap("[::1]:1"), remote: ap("[::1]:2"), state: tcpEstablished, uid: 0, inode: 5}, ""},
		{"time_wait_reads_as_uid_0_inode_0", diagReply(9, linuxAFInet, tcpTimeWait, client, server, 0, 0),
			client, server, tcpSocket{local: client, remote: server, state: tcpTimeWait}, ""},
		{"no_such_socket", diagError(9, int32(syscall.ENOENT)), client, server, tcpSocket{}, "ENOENT"},
		{"other_errno", diagError(9, int32(syscall.EPERM)), client, server, tcpSocket{}, "operation not permitted"},
		{"acknowledgement", diagError(9, 0), client, server, tcpSocket{}, "acknowledgement"},
		{"positive_error_code", diagError(9, -5), client, server, tcpSocket{}, "error code"},
		{"error_cut_short", diagError(9, 1)[:nlmsgHdrLen+2], client, server, tcpSocket{}, "message length"},
		{"short_error", patch(diagError(9, 1)[:nlmsgHdrLen+2], 0, nlmsgHdrLen+2), client, server, tcpSocket{}, "short error"},
		{"another_request", ok, client, server, tcpSocket{}, "reply to request"},
		{"empty", nil, client, server, tcpSocket{}, "short reply"},
		{"length_beyond_the_reply", ok[:len(ok)-1], client, server, tcpSocket{}, "message length"},
		{"length_below_a_header", patch(ok, 0, 8, 0, 0, 0), client, server, tcpSocket{}, "message length"},
		{"short_socket_message", patch(ok[:nlmsgHdrLen+40], 0, nlmsgHdrLen+40, 0, 0, 0), client, server, tcpSocket{}, "short socket message"},
		{"unknown_type", patch(ok, 4, 0x10, 0), client, server, tcpSocket{}, "message type"},
		{"unknown_family", patch(ok, nlmsgHdrLen, 1), client, server, tcpSocket{}, "address family"},
		{"state_zero", patch(ok, nlmsgHdrLen+1, 0), client, server, tcpSocket{}, "state"},
		{"another_client_port", diagReply(9, linuxAFInet, tcpEstablished, ap("127.0.0.2:50736"), server, 0, 1), client, server, tcpSocket{}, "describes"},
		{"another_client_address", diagReply(9, linuxAFInet, tcpEstablished, ap("127.0.0.3:50735"), server, 0, 1), client, server, tcpSocket{}, "describes"},
		{"a_listener_instead", diagReply(9, linuxAFInet, tcpListen, client, ap("0.0.0.0:0"), 0, 1), client, server, tcpSocket{}, "describes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			seq := uint32(9)
			if tc.name == "another_request" {
				seq = 10
			}
			got, err := parseInetDiagReply(binary.LittleEndian, tc.reply, seq, tc.local, tc.remote)
			switch {
			case tc.wantErr == "ENOENT":
				if !errors.Is(err, errNoSocket) {
					t.Fatalf("got %+v, %v; want errNoSocket", got, err)
				}
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || errors.Is(err, errNoSocket) {
					t.Fatalf("got %+v, %v; want an error containing %q", got, err, tc.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case got != tc.want:
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// FuzzParseInetDiagReply: any reply is refused or describes exactly the
// socket asked about; nothing panics.
func FuzzParseInetDiagReply(f *testing.F) {
	ap := netip.MustParseAddrPort
	client, server := ap("127.0.0.2:50735"), ap("127.0.0.1:15001")
	f.Add(diagReply(9, linuxAFInet, tcpEstablished, client, server, 65534, 4242), false)
	f.Add(diagReply(9, linuxAFInet6, tcpEstablished, ap("[::1]:1"), ap("[::1]:2"), 0, 5), true)
	f.Add(diagError(9, int32(syscall.ENOENT)), false)
	f.Add(diagError(9, 0), false)
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		local, remote := client, server
		if v6 {
			local, remote = ap("[::1]:1"), ap("[::1]:2")
		}
		s, err := parseInetDiagReply(binary.LittleEndian, b, 9, local, remote)
		if err != nil {
			return
		}
		if !sameAddrPort(s.local, local) || !sameAddrPort(s.remote, remote) || s.state == 0 || s.state > tcpMaxState {
			t.Fatalf("accepted a reply about %+v", s)
		}
	})
}
