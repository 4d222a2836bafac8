package opaapi

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

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
