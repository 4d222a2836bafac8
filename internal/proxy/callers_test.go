package proxy

import (
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestNewCallerCheck(t *testing.T) {
	tcp := Outbound{Name: "orders", Listen: "127.0.0.1:15001"}
	sock := Outbound{Name: "orders", Listen: "unix:/run/orders.sock"}
	gid := uint32(100)
	tests := []struct {
		name     string
		callers  LocalCallers
		outbound []Outbound
		wantErr  string
		wantUIDs []uint32
	}{
		{"default_is_the_sidecars_uid", LocalCallers{}, []Outbound{tcp}, "", []uint32{uint32(os.Geteuid())}},
		{"listed_uids_replace_the_default", LocalCallers{UIDs: []uint32{1000, 1001}}, []Outbound{tcp}, "", []uint32{1000, 1001}},
		{"gids_alone_admit_no_uid", LocalCallers{GIDs: []uint32{100}}, []Outbound{sock}, "", nil},
		{"any_local_user_with_uids", LocalCallers{AnyLocalUser: true, UIDs: []uint32{1000}}, []Outbound{tcp}, "AnyLocalUser excludes", nil},
		{"gids_with_a_tcp_listener", LocalCallers{GIDs: []uint32{100}}, []Outbound{sock, tcp}, "cannot check the caller's group", nil},
		{"socket_mode_on_tcp", LocalCallers{}, []Outbound{{Listen: "127.0.0.1:1", SocketMode: 0o660}}, "needs a unix socket listener", nil},
		{"socket_group_on_tcp", LocalCallers{}, []Outbound{{Listen: "127.0.0.1:1", SocketGID: &gid}}, "needs a unix socket listener", nil},
		{"socket_mode_beyond_permissions", LocalCallers{}, []Outbound{{Listen: "unix:/run/o.sock", SocketMode: fs.ModeSetuid | 0o600}}, "beyond the permissions", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cc, err := newCallerCheck(tc.callers, tc.outbound, prometheus.NewRegistry(), discardLogger())
			if !callerCheckSupported && !tc.callers.AnyLocalUser && tc.wantErr == "" {
				tc.wantErr = "cannot be checked on"
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cc.uids, tc.wantUIDs) {
				t.Fatalf("uids %v, want %v", cc.uids, tc.wantUIDs)
			}
		})
	}
}

// Outside Linux the check cannot be made: an outbound listener then
// needs AnyLocalUser, said out loud.
func TestOutboundNeedsAnyLocalUserWhereUnchecked(t *testing.T) {
	if callerCheckSupported {
		t.Skip("the local caller check is implemented here")
	}
	_, err := New(Config{Identity: &NodeIdentity{}, Logger: discardLogger(),
		Outbound: []Outbound{{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:1", ID: spiffeid.RequireFromString(ordersID)}}})
	if err == nil || !strings.Contains(err.Error(), "outbound_allow_any_local_user") {
		t.Fatalf("New: %v, want a refusal naming outbound_allow_any_local_user", err)
	}
}

func TestUnixSocketMode(t *testing.T) {
	gid := uint32(100)
	tests := []struct {
		name    string
		callers LocalCallers
		ob      Outbound
		want    fs.FileMode
	}{
		{"own_uid_only", LocalCallers{}, Outbound{}, 0o600},
		{"own_uid_only_with_group", LocalCallers{}, Outbound{SocketGID: &gid}, 0o600},
		{"listed_uids", LocalCallers{UIDs: []uint32{1000}}, Outbound{}, 0o666},
		{"group", LocalCallers{GIDs: []uint32{100}}, Outbound{SocketGID: &gid}, 0o660},
		{"any_local_user", LocalCallers{AnyLocalUser: true}, Outbound{}, 0o666},
		{"explicit", LocalCallers{UIDs: []uint32{1000}}, Outbound{SocketMode: 0o620}, 0o620},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.ob.Listen = "unix:/run/o.sock"
			cc, err := newCallerCheck(tc.callers, nil, prometheus.NewRegistry(), discardLogger())
			if err != nil {
				t.Fatal(err)
			}
			if got := cc.socketMode(tc.ob); got != tc.want {
				t.Fatalf("mode %v, want %v", got, tc.want)
			}
		})
	}
}

// A connection that is neither loopback TCP nor a unix socket (an
// in-memory pipe here) has no local user to check: it is refused, unless
// any local user is admitted.
func TestCallerCheckRefusesUnknownTransports(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	logs := &syncBuf{}
	reg := prometheus.NewRegistry()
	cc, err := newCallerCheck(LocalCallers{UIDs: []uint32{0}}, nil, reg, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if cc.admit(a, "orders") {
		t.Fatal("a pipe was admitted")
	}
	if n := counterValue(t, reg, "moatless_sidecar_outbound_refused_total", map[string]string{"listener": "orders", "reason": refusedNotLocal}); n != 1 {
		t.Fatalf("refused{not_local} = %v, want 1", n)
	}
	if !strings.Contains(logs.String(), `"reason":"not_local"`) {
		t.Fatalf("log: %s", logs)
	}
	anyUser, err := newCallerCheck(LocalCallers{AnyLocalUser: true}, nil, prometheus.NewRegistry(), discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	if !anyUser.admit(a, "orders") {
		t.Fatal("AnyLocalUser refused a connection")
	}
}

// counterValue sums the samples of a counter in reg whose labels include
// the given ones, 0 when there are none.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metrics
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// TestCallerRefusalsLogPaced: a local user opening refused connections in
// a loop gets each one counted, but cannot make the sidecar write a log
// line for each.
func TestCallerRefusalsLogPaced(t *testing.T) {
	logs := &syncBuf{}
	reg := prometheus.NewRegistry()
	cc, err := newCallerCheck(LocalCallers{UIDs: []uint32{0}}, nil, reg, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	for range n {
		a, b := net.Pipe()
		if cc.admit(a, "orders") {
			t.Fatal("a pipe was admitted")
		}
		a.Close()
		b.Close()
	}
	if got := counterValue(t, reg, "moatless_sidecar_outbound_refused_total", map[string]string{"listener": "orders"}); got != n {
		t.Fatalf("refusals counted: %v, want %d", got, n)
	}
	// One line a second: a machine slow enough to spend most of a second
	// per refusal is not one this test runs on.
	if lines := strings.Count(logs.String(), "outbound connection refused"); lines == 0 || lines > n/10 {
		t.Fatalf("%d log lines for %d refusals", lines, n)
	}
}
