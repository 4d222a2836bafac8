package loopback

import (
	"net"
	"testing"
)

// TestFreeAddrDistinctAndBindable: addresses are never repeated within a
// process, lie below the ephemeral range, and can be listened on.
func TestFreeAddrDistinctAndBindable(t *testing.T) {
	seen := map[string]bool{}
	for range 200 {
		a, err := FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		if seen[a] {
			t.Fatalf("%s handed out twice", a)
		}
		seen[a] = true
		_, port, _ := net.SplitHostPort(a)
		if port >= "32768" && len(port) == 5 {
			t.Fatalf("%s is in the ephemeral range", a)
		}
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("listen %s: %v", a, err)
		}
		l.Close()
	}
}
