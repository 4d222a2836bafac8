package opaapi

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/moatless/moatless/internal/policy"
)

// TestLocalUsers: on a host shared by several users, the loopback OPA API
// answers root, the process's own uid and the listed ones; any other
// local user, or one the kernel cannot name, gets 403 and a log line with
// its uid — over a real loopback connection, so the check sees the
// addresses the kernel is asked about.
func TestLocalUsers(t *testing.T) {
	own := uint32(os.Geteuid())
	other := uint32(65534)
	if own == other {
		other = 65533
	}
	cases := []struct {
		name   string
		uids   []uint32
		caller uint32
		err    error
		nilFn  bool
		status int
		logs   string
	}{
		{"own_uid", nil, own, nil, false, 200, ""},
		{"root", nil, 0, nil, false, 200, ""},
		{"listed_uid", []uint32{other}, other, nil, false, 200, ""},
		{"other_uid", nil, other, nil, false, 403, `"reason":"not_allowed","uid":` + strconv.Itoa(int(other))},
		{"other_uid_not_listed", []uint32{other + 1}, other, nil, false, 403, `"reason":"not_allowed"`},
		{"caller_unknown", nil, 0, errors.New("the client's socket is gone"), false, 403, `"reason":"unknown_caller"`},
		{"no_lookup_on_this_platform", nil, 0, nil, true, 403, `"reason":"unknown_caller"`},
	}
	// An admitted caller gets what the API answers without the check: 200,
	// or 501 in moatless-sidecar's build (-tags norego), which has no OPA.
	bare := http.NewServeMux()
	(&Handler{Rego: func() *policy.Rego { return nil }}).Register(bare, func(h http.Handler) http.Handler { return h })
	rec := httptest.NewRecorder()
	bare.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/policies", nil))
	admitted := rec.Code
	if admitted != http.StatusOK && admitted != http.StatusNotImplemented {
		t.Fatalf("the API without the check answered %d %s", admitted, rec.Body)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.status == http.StatusOK {
				c.status = admitted
			}
			var logs strings.Builder
			var asked [2]netip.AddrPort
			u := &LocalUsers{UIDs: c.uids, Logger: slog.New(slog.NewJSONHandler(&logs, nil))}
			if !c.nilFn {
				u.ClientUID = func(client, server netip.AddrPort) (uint32, error) {
					asked = [2]netip.AddrPort{client, server}
					return c.caller, c.err
				}
			}
			mux := http.NewServeMux()
			(&Handler{Rego: func() *policy.Rego { return nil }}).Register(mux, u.Wrap)
			srv := httptest.NewServer(mux)
			defer srv.Close()
			resp, err := http.Get(srv.URL + "/v1/policies")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("status %d %s, want %d", resp.StatusCode, body, c.status)
			}
			if !c.nilFn && asked[1].String() != srv.Listener.Addr().String() {
				t.Fatalf("asked about %v, want the server end %s", asked, srv.Listener.Addr())
			}
			if c.status == 403 && (strings.Contains(string(body), "result") || !strings.Contains(logs.String(), `"msg":"OPA API request refused"`) || !strings.Contains(logs.String(), c.logs)) {
				t.Fatalf("refusal: body %s, log %s", body, logs.String())
			}
		})
	}
}

// TestLocalUsersRefusesRelayedRequests: a local proxy that relays other
// clients' requests — a reverse proxy or tunnel run as root or as the
// sidecar's user (cloudflared, Caddy, Envoy, Squid) — connects from an
// admitted uid, so the kernel's answer alone would let its clients, up
// to the whole internet, read the policy. Such proxies mark what they
// relay (RFC 7239 Forwarded, X-Forwarded-*, Via, their client-address
// headers): a request that bears one is refused whoever holds the
// socket, counted and logged, and no header spelling (case, _ for -)
// slips past.
func TestLocalUsersRefusesRelayedRequests(t *testing.T) {
	own := uint32(os.Geteuid())
	cases := []struct {
		name, header, value string
		refused             bool
	}{
		{"plain_request", "", "", false},
		{"user_agent", "User-Agent", "curl/8.5.0", false},
		{"request_id", "X-Request-Id", "abc", false},
		{"forwarded", "Forwarded", "for=198.51.100.7", true},
		{"x_forwarded_for", "X-Forwarded-For", "198.51.100.7", true},
		{"x_forwarded_for_lower_case", "x-forwarded-for", "198.51.100.7", true},
		{"x_forwarded_for_underscores", "X_Forwarded_For", "198.51.100.7", true},
		{"x_forwarded_host", "X-Forwarded-Host", "evil.example", true},
		{"x_forwarded_proto", "X-Forwarded-Proto", "https", true},
		{"via", "Via", "1.1 squid", true},
		{"x_real_ip", "X-Real-IP", "198.51.100.7", true},
		{"cloudflared", "Cf-Connecting-Ip", "198.51.100.7", true},
		{"true_client_ip", "True-Client-IP", "198.51.100.7", true},
		{"envoy", "X-Envoy-Expected-Rq-Timeout-Ms", "15000", true},
		{"empty_forwarded", "X-Forwarded-For", "", true},
	}
	reg := prometheus.NewRegistry()
	refused := NewRefusedCounter()
	reg.MustRegister(refused)
	var logs strings.Builder
	u := &LocalUsers{
		ClientUID: func(client, server netip.AddrPort) (uint32, error) { return own, nil },
		Logger:    slog.New(slog.NewJSONHandler(&logs, nil)),
		Refused:   refused,
		API:       "opa",
	}
	var reached atomic.Int32
	srv := httptest.NewServer(u.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached.Add(1) })))
	defer srv.Close()
	want := 0
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", srv.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			raw := "GET /v1/data HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
			if c.header != "" {
				raw += c.header + ": " + c.value + "\r\n"
			}
			if _, err := io.WriteString(conn, raw+"\r\n"); err != nil {
				t.Fatal(err)
			}
			before := reached.Load()
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if got := resp.StatusCode == http.StatusForbidden; got != c.refused {
				t.Fatalf("status %d %s, refused %v, want %v", resp.StatusCode, body, got, c.refused)
			}
			if c.refused {
				want++
				if reached.Load() != before || !strings.Contains(string(body), "relayed") || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
					t.Fatalf("refusal: reached %d, body %s, header %v", reached.Load()-before, body, resp.Header)
				}
			}
		})
	}
	if got := testutil.ToFloat64(refused.WithLabelValues("opa", "forwarded")); int(got) != want {
		t.Fatalf("counted %v forwarded refusals, want %d", got, want)
	}
	if !strings.Contains(logs.String(), `"reason":"forwarded","header":"Forwarded"`) {
		t.Fatalf("log: %s", logs.String())
	}
}

// TestLocalUsersCountsRefusals: every refusal of the user check is
// counted by reason in moatless_admin_api_refused_total, under the API's
// name, so that an operator sees probing without reading the logs.
func TestLocalUsersCountsRefusals(t *testing.T) {
	own := uint32(os.Geteuid())
	other := own + 1
	reg := prometheus.NewRegistry()
	refused := NewRefusedCounter()
	reg.MustRegister(refused)
	uid, uidErr := other, error(nil)
	u := &LocalUsers{
		ClientUID: func(client, server netip.AddrPort) (uint32, error) { return uid, uidErr },
		Logger:    quietLog(),
		Refused:   refused,
		API:       "pprof",
	}
	h := u.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(host string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+"/debug/pprof/heap", nil)
		if host != "" {
			req.Host = host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	get("")
	uidErr = errors.New("the client's socket is gone")
	get("")
	get("evil.example")
	uid, uidErr = own, nil
	if code := get(""); code != http.StatusOK {
		t.Fatalf("own uid: %d", code)
	}
	// A caller that is not loopback never reaches the lookup.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/debug/pprof/heap", nil)
	req.RemoteAddr = "192.0.2.1:4000"
	h.ServeHTTP(rec, req)
	for reason, want := range map[string]float64{"not_allowed": 1, "unknown_caller": 1, "host": 1, "not_loopback": 1, "forwarded": 0} {
		if got := testutil.ToFloat64(refused.WithLabelValues("pprof", reason)); got != want {
			t.Errorf("%s: %v, want %v", reason, got, want)
		}
	}
}

// quietLog is a logger that discards everything (in every build of the
// package: the norego build runs these tests too).
func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
