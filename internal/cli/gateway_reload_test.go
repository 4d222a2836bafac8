package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/gateway"
	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/testpki"
)

// TestGatewayReloadTickLogsOncePerFailure drives the gateway's reload
// loop one tick at a time (reloadTick; the ticker is the only thing
// watchConfig adds). A TLS certificate or config file that stays broken
// is logged when the failure starts and when it changes, not on every
// tick, and once when it works again. Before, each tick of a lasting
// failure logged an error: one line every 2 s for as long as it lasted.
func TestGatewayReloadTickLogsOncePerFailure(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "example.org")
	pub := ca.WriteFiles(t, dir, "public", ca.SVID(t, "spiffe://example.org/ns/edge/sa/gateway", time.Hour))
	path := writeFile(t, dir, "gateway.yaml", fmt.Sprintf(`listen: "127.0.0.1:0"
tls: {cert: %q, key: %q}
identity: {files: {cert: %q, key: %q, bundle: %q}}
routes:
  - {name: orders, path_prefix: /, upstreams: ["127.0.0.1:1"], spiffe_id: "spiffe://example.org/ns/prod/sa/orders"}
admin: "off"
`, pub.Cert, pub.Key, pub.Cert, pub.Key, pub.Bundle))
	cfg, err := config.LoadGateway(path)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	g, err := gateway.New(gateway.Options{Config: cfg, Identity: &proxy.NodeIdentity{}, Logger: log, AccessLog: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	r := &gatewayRun{path: path, cfg: cfg, log: log}
	w := r.newConfigWatch()
	goodCert, _ := os.ReadFile(pub.Cert)
	goodConfig, _ := os.ReadFile(path)
	count := func(msg string) int { return strings.Count(logs.String(), `"msg":"`+msg) }

	steps := []struct {
		name   string
		change func()
		ticks  int
		want   map[string]int // log lines so far, by message prefix
	}{
		{"nothing_changed", func() {}, 3, map[string]int{"TLS certificate reload failed": 0, "config reload failed": 0}},
		{"certificate_cut_short", func() { os.WriteFile(pub.Cert, goodCert[:len(goodCert)/2], 0o600) }, 5,
			map[string]int{"TLS certificate reload failed": 1}},
		{"key_gone_too", func() { os.Remove(pub.Key) }, 4, map[string]int{"TLS certificate reload failed": 2}},
		{"config_file_gone", func() { os.Remove(path) }, 4, map[string]int{"TLS certificate reload failed": 2, "config reload failed": 1}},
		{"config_back", func() { os.WriteFile(path, goodConfig, 0o600) }, 3, map[string]int{"config reload failed": 1, "config file reads again": 1, "config reloaded": 0}},
		{"certificate_fixed", func() {
			ca.WriteFiles(t, dir, "public", ca.SVID(t, "spiffe://example.org/ns/edge/sa/gateway", time.Hour))
		}, 3,
			map[string]int{"TLS certificate reload failed": 2, "TLS certificate reload works again": 1, "TLS certificate reloaded": 0}},
	}
	for _, s := range steps {
		s.change()
		for range s.ticks {
			r.reloadTick(context.Background(), g, w)
		}
		for msg, want := range s.want {
			if got := count(msg); got != want {
				t.Fatalf("%s: %d lines %q after %d ticks, want %d:\n%s", s.name, got, msg, s.ticks, want, logs.String())
			}
		}
	}
}
