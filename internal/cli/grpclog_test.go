package cli

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/moatless/moatless/internal/cli/dataplane"
)

// TestGRPCLogsAreJSON: what gRPC itself logs (grpclog: a client that
// cannot connect, say) comes out in the role's JSON log like every other
// line, at the matching level, marked as gRPC's. Before, gRPC wrote its
// own plain-text lines ("WARNING: [core] ...") to the process's stderr, in
// the middle of the JSON stream and past the role's level.
func TestGRPCLogsAreJSON(t *testing.T) {
	var buf bytes.Buffer
	w := &syncWriter{w: &buf}
	if _, err := dataplane.NewLogger(w, "json", "info"); err != nil {
		t.Fatal(err)
	}
	snapshot := func() []byte {
		w.mu.Lock()
		defer w.mu.Unlock()
		return bytes.Clone(buf.Bytes())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	cc, err := grpc.NewClient(closed, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cc.Connect()

	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, l := range logLines(t, snapshot()) {
			msg, _ := l["msg"].(string)
			if !strings.Contains(msg, "failed to connect to") || !strings.Contains(msg, closed) {
				continue
			}
			if l["level"] != "WARN" || l["logger"] != "grpc" || l["grpc_component"] != "core" {
				t.Fatalf("gRPC's line: %v", l)
			}
			for _, l := range logLines(t, snapshot()) {
				if l["level"] == "DEBUG" || l["level"] == "INFO" && l["logger"] == "grpc" {
					t.Fatalf("gRPC's info chatter passed an info-level log: %v", l)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no gRPC connection warning in the JSON log:\n%s", snapshot())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		cc.WaitForStateChange(ctx, cc.GetState())
		cancel()
	}
}
