// Package loopback hands out loopback TCP addresses for a process about to
// be started (the demo's children, tests' servers) to listen on, and
// guards plaintext loopback listeners against DNS rebinding (GuardHost).
package loopback

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
)

// The range ports are picked from: below Linux's default ephemeral range
// (32768–60999, also the range ":0" listeners get). A port taken from the
// ephemeral range by listening on ":0" and closed again may be taken by any
// outgoing connection on the host as its source port before the intended
// process binds it, which then fails with "address in use" or its clients
// with "connection refused", at random. Below the range only an explicit
// bind takes a port.
const (
	lowPort  = 20000
	highPort = 32000
)

var (
	mu    sync.Mutex
	given = map[int]bool{}
)

// FreeAddr returns "127.0.0.1:PORT" for a port nobody listened on a moment
// ago and that this process has not handed out before. Another process may
// still bind it first; the chance is small, never zero.
func FreeAddr() (string, error) {
	p, err := FreePort()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", p), nil
}

// FreePort is FreeAddr's port alone.
func FreePort() (int, error) {
	mu.Lock()
	defer mu.Unlock()
	for range 2000 {
		p := lowPort + rand.IntN(highPort-lowPort)
		if given[p] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		given[p] = true
		return p, nil
	}
	return 0, errors.New("loopback: no free port in 20000-31999")
}
