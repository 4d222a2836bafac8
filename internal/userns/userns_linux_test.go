package userns

import (
	"fmt"
	"os"
	"testing"
)

// TestParseIDMap: uid_map as the kernel writes it; anything else is an
// error (and callers then take the overflow id as ambiguous).
func TestParseIDMap(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []Range
		initial  bool
	}{
		{"initial_namespace", "         0          0 4294967295\n", []Range{{0, 0, 4294967295}}, true},
		{"rootless", "         0       1000          1\n         1     100000      65536\n", []Range{{0, 1000, 1}, {1, 100000, 65536}}, false},
		{"identity_but_short", "0 0 4294967294\n", []Range{{0, 0, 4294967294}}, false},
		{"empty", "", nil, false},
		{"two_fields", "0 0\n", nil, false},
		{"not_a_number", "0 x 1\n", nil, false},
		{"too_large", "0 0 4294967296\n", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseIDMap([]byte(tc.in))
			if tc.want == nil {
				if err == nil {
					t.Fatalf("parsed %v, want an error", got)
				}
				return
			}
			if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) || Initial(got) != tc.initial {
				t.Fatalf("got %v, %v, initial %v; want %v, initial %v", got, err, Initial(got), tc.want, tc.initial)
			}
		})
	}
}

// TestMaps: a range holds its first id and Count-1 after it, no more.
func TestMaps(t *testing.T) {
	m := []Range{{0, 1000, 1}, {65534, 65534, 1}, {100, 200000, 10}}
	for id, want := range map[uint32]bool{0: true, 1: false, 65534: true, 65535: false, 99: false, 100: true, 109: true, 110: false} {
		if got := Maps(m, id); got != want {
			t.Errorf("Maps(%d) = %v, want %v", id, got, want)
		}
	}
}

// TestOverflow: this host's overflow ids, or the default where /proc/sys
// does not say.
func TestOverflow(t *testing.T) {
	if uid, gid := Overflow(t.TempDir()); uid != DefaultOverflow || gid != DefaultOverflow {
		t.Fatalf("without /proc/sys: %d %d", uid, gid)
	}
	if _, err := os.Stat("/proc/sys/kernel/overflowuid"); err != nil {
		t.Skip(err)
	}
	if uid, _ := Overflow("/proc"); uid == 0 {
		t.Fatalf("overflow uid %d", uid)
	}
}

// FuzzParseIDMap: no input panics, and every range parsed fits in 32
// bits.
func FuzzParseIDMap(f *testing.F) {
	for _, s := range []string{"0 0 4294967295\n", "0 1000 1\n1 100000 65536\n", "", "0 0", "\n\n", "0 0 1 1"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		maps, err := ParseIDMap(b)
		if err != nil {
			return
		}
		for _, m := range maps {
			if m.Inside > 1<<32-1 || m.Outside > 1<<32-1 || m.Count > 1<<32-1 {
				t.Fatalf("%v from %q", m, b)
			}
		}
	})
}
