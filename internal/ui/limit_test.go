package ui

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// TestLoginLimitKeys: the login limit counts an IPv6 host by its /64
// (rotating addresses within it costs nothing) and every IPv4 address,
// and IPv4-mapped IPv6 addresses, on their own. Fails on the parent
// commit: there, every IPv6 address had a bucket of its own.
func TestLoginLimitKeys(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tests := []struct {
		name    string
		addrs   func(i int) string
		refused bool // the 11th attempt
	}{
		{"ipv6_same_64", func(i int) string { return fmt.Sprintf("2001:db8:1:2:%x::%x", i*4099, i+1) }, true},
		{"ipv6_same_address", func(int) string { return "2001:db8::1" }, true},
		{"ipv6_other_64s", func(i int) string { return fmt.Sprintf("2001:db8:1:%x::1", i) }, false},
		{"ipv4_neighbours", func(i int) string { return fmt.Sprintf("192.0.2.%d", i+1) }, false},
		{"ipv4_mapped_neighbours", func(i int) string { return fmt.Sprintf("::ffff:192.0.2.%d", i+1) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLoginLimiter()
			for i := range loginPerIPBurst {
				if ok, _ := l.allow(tt.addrs(i), now); !ok {
					t.Fatalf("attempt %d from %s refused", i, tt.addrs(i))
				}
			}
			if ok, _ := l.allow(tt.addrs(loginPerIPBurst), now); ok == tt.refused {
				t.Fatalf("attempt %d from %s: allowed %v", loginPerIPBurst, tt.addrs(loginPerIPBurst), ok)
			}
		})
	}
}

// TestLoginLimitFullTable: when as many addresses as the table holds are
// all failing at once (a botnet), a new address still gets its attempts:
// some other address's bucket is dropped (it starts again from full, at
// most one burst more for it), not the newcomer refused, who may be the
// admin. Fails on the parent commit: the newcomer was refused.
func TestLoginLimitFullTable(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	l := newLoginLimiter()
	for i := range maxLimiterKeys {
		if ok, _ := l.allow(fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&255, i&255), now); !ok {
			t.Fatalf("address %d refused", i)
		}
	}
	if ok, _ := l.allow("192.0.2.1", now); !ok {
		t.Fatal("a new address was refused while the table was full")
	}
	if n := len(l.perIP); n > maxLimiterKeys {
		t.Fatalf("the table grew to %d", n)
	}
}

// FuzzLimitKey: any RemoteAddr host folds without panicking; an IPv6
// address's key is its /64, which the address lies in, and any other
// string is its own key.
func FuzzLimitKey(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "::1", "2001:db8::1", "::ffff:192.0.2.1", "fe80::1%eth0", "", "x", "2001:db8::1/64", "[::1]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k := limitKey(s)
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is6() || a.Is4In6() {
			if k != s {
				t.Fatalf("limitKey(%q) = %q, want it unchanged", s, k)
			}
			return
		}
		p, err := netip.ParsePrefix(k)
		if err != nil || p.Bits() != 64 || !p.Contains(a.WithZone("")) {
			t.Fatalf("limitKey(%q) = %q, want the /64 holding it", s, k)
		}
	})
}
