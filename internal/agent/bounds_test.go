package agent

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// TestWorkloadBoundsPerUIDReachTheSocket: the agent's MaxConnsPerUID
// (--workload-max-conns-per-uid) is the Workload API's: with a bound of
// 2, a third connection of the same uid is closed on accept, while the
// default (512) would serve it.
func TestWorkloadBoundsPerUIDReachTheSocket(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	af := startAgentWith(t, f, "t", t.TempDir(), func(c *Config) { c.MaxConnsPerUID = 2 })
	// served reports whether the agent's gRPC server speaks first on a
	// new connection (its HTTP/2 SETTINGS: the connection was accepted),
	// or closes it.
	served := func() bool {
		c, err := net.Dial("unix", af.sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err = c.Read(make([]byte, 1))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the agent neither served nor closed a connection")
		}
		return err == nil
	}
	for i := range 2 {
		if !served() {
			t.Fatalf("connection %d of 2 was closed", i+1)
		}
	}
	if served() {
		t.Fatal("a third connection of one uid was served past MaxConnsPerUID 2")
	}
}
