package proxy

import (
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const smapsSample = `00400000-0107d000 r-xp 00000000 08:01 123 /opt/moatless
Rss:                8748 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
0107d000-01db0000 r--p 00c7d000 08:01 123 /opt/moatless
Rss:                8072 kB
Anonymous:             0 kB
01db0000-01e6c000 rw-p 019b0000 08:01 123 /opt/moatless
Rss:                 636 kB
Anonymous:           600 kB
01e6c000-01e70000 r--p 01a6c000 08:01 123 /opt/moatless
Rss:                  16 kB
Anonymous:            16 kB
7f0000000000-7f0000100000 r-xp 00000000 08:01 456 /usr/lib/libc.so.6
Rss:                 832 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r--s 00000000 08:01 123 /opt/moatless
Rss:                   4 kB
Anonymous:             0 kB
7f0000400000-7f0000500000 rw-p 00000000 00:00 0
Rss:                4600 kB
Anonymous:          4600 kB
`

func TestCleanReadOnlyMappings(t *testing.T) {
	tests := []struct {
		name  string
		smaps string
		want  [][2]uintptr
	}{
		{
			name:  "code_and_rodata_only",
			smaps: smapsSample,
			// The writable data, the relocated (copy-on-write) read-only
			// mapping, the shared mapping and other files are skipped.
			want: [][2]uintptr{{0x400000, 0x107d000}, {0x107d000, 0x1db0000}},
		},
		{name: "empty", smaps: "", want: nil},
		{
			name:  "no_anonymous_line_is_not_advised",
			smaps: "00400000-0107d000 r-xp 00000000 08:01 123 /opt/moatless\nRss: 8 kB\n",
			want:  nil,
		},
		{
			name:  "garbage_header",
			smaps: "zz-0107d000 r-xp 00000000 08:01 123 /opt/moatless\nAnonymous: 0 kB\n",
			want:  nil,
		},
		{
			name:  "deleted_executable_is_matched_by_first_word",
			smaps: "00400000-0107d000 r-xp 00000000 08:01 123 /opt/moatless (deleted)\nAnonymous: 0 kB\n",
			want:  [][2]uintptr{{0x400000, 0x107d000}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := cleanReadOnlyMappings(strings.NewReader(tt.smaps), "/opt/moatless")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ranges (-want +got):\n%s", diff)
			}
		})
	}
}

// exeRSS sums the resident kB of the executable's read-only mappings.
func exeRSS(t *testing.T) int {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	total, ours := 0, false
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) >= 6 && strings.Contains(f[0], "-") {
			ours = f[5] == exe && f[1][1] != 'w'
			continue
		}
		if ours && len(f) >= 2 && f[0] == "Rss:" {
			var kb int
			for _, c := range f[1] {
				kb = kb*10 + int(c-'0')
			}
			total += kb
		}
	}
	return total
}

func TestReleaseStartupPages(t *testing.T) {
	before := exeRSS(t)
	n, err := releaseStartupPages()
	if err != nil {
		t.Fatal(err)
	}
	after := exeRSS(t)
	if n <= 0 {
		t.Fatalf("advised %d bytes, want the executable's read-only mappings", n)
	}
	// The test keeps running (its code faults back in) and holds fewer
	// of the executable's pages than before.
	if after >= before {
		t.Errorf("resident kB of the executable: %d before, %d after; want fewer", before, after)
	}
	t.Logf("executable resident: %d kB → %d kB (%d bytes advised)", before, after, n)
}
