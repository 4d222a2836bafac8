package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/testpki"
)

// TestShutdownDrains: Shutdown called directly (not through Serve's
// context) drains as net/http's Server.Shutdown does, on both server
// paths: the listener closes at once (a new connection is refused), a
// request in flight to a slow upstream is let finish with its 200, and
// only then does Shutdown return and Serve return ErrClosed. Before, the
// closed listener ended Serve's accept loop and Serve closed every
// connection, cutting the request in flight.
func TestShutdownDrains(t *testing.T) {
	for _, fast := range []bool{false, true} {
		name := map[bool]string{false: "nethttp", true: "fast_path"}[fast]
		t.Run(name, func(t *testing.T) {
			ca := testpki.NewCA(t, td)
			app := newHeldApp(t)
			tg := startGatewayWith(t, ca, startUpstream(t, ca, ordersID, app.addr), func(c *config.Gateway) { c.DisableHTTP1FastPath = !fast })

			c, err := tls.Dial("tcp", tg.addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
			select {
			case <-app.arrived: // the request is in flight, at the upstream app
			case <-time.After(5 * time.Second):
				t.Fatal("the request did not reach the app")
			}

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			shut := make(chan error, 1)
			go func() { shut <- tg.g.Shutdown(ctx) }()

			// The listener closes: a new connection is refused.
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				nc, err := net.DialTimeout("tcp", tg.addr, time.Second)
				if err != nil {
					break
				}
				nc.Close()
				if time.Now().After(deadline) {
					t.Fatal("the gateway still accepts connections while shutting down")
				}
			}
			select {
			case err := <-shut:
				t.Fatalf("Shutdown returned (%v) with a request in flight", err)
			case <-tg.done:
				t.Fatalf("Serve returned (%v) with a request in flight", tg.serveErr)
			default:
			}

			close(app.release)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("the request in flight was cut: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(body) != "done" || !resp.Close {
				t.Errorf("request in flight: %d %q close=%v; want 200 \"done\" and the connection closed", resp.StatusCode, body, resp.Close)
			}
			if err := <-shut; err != nil {
				t.Errorf("Shutdown: %v", err)
			}
			<-tg.done
			if !errors.Is(tg.serveErr, ErrClosed) {
				t.Errorf("Serve returned %v, want ErrClosed", tg.serveErr)
			}
			if err := tg.g.Serve(context.Background()); !errors.Is(err, ErrClosed) {
				t.Errorf("Serve after Shutdown: %v, want ErrClosed", err)
			}
		})
	}
}

// heldApp answers every request with 200 "done", but only once release
// is closed; arrived gets a value as each request comes in.
type heldApp struct {
	addr    string
	arrived chan struct{}
	release chan struct{}
}

func newHeldApp(t *testing.T) *heldApp {
	t.Helper()
	a := &heldApp{arrived: make(chan struct{}, 16), release: make(chan struct{})}
	l := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.arrived <- struct{}{}
		select {
		case <-a.release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "done")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	a.addr = l.Addr().String()
	return a
}
