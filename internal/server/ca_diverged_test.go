package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// A replica that cannot adopt the CA state in the store keeps signing
// with the state it holds, which the other replicas may have left behind
// (here: an older sealed state written back over a taint's, by someone
// who can write the store but has no KEK; an earlier version's replica
// that cannot read a newer state is in the same place). It says so in
// /readyz, so traffic goes to the replicas that follow the CA, and is
// ready again once the store holds a state it can adopt.
func TestCAReplicaThatCannotFollowTheStateIsNotReady(t *testing.T) {
	e := start(t, "", func(c *config.Server) { c.PollInterval = wire.Duration(20 * time.Millisecond) })
	ctx := context.Background()
	db := e.srv.Store()
	old, err := db.LoadCAState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.caStep(server.PathAdminCAPrepare, server.CAStepRequest{Kind: "x509"})
	cur, err := db.LoadCAState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	readyz := func() (int, string) {
		st, body := e.do(e.client(nil), "GET", "/readyz?verbose", "", nil)
		return st, string(body)
	}
	if st, body := readyz(); st != 200 {
		t.Fatalf("readyz before: %d %s", st, body)
	}
	if err := db.SaveCAState(ctx, old); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "readyz to report the CA state it cannot adopt", func() bool {
		st, body := readyz()
		return st == 503 && strings.Contains(body, "[-]ca-state failed") && strings.Contains(body, "older")
	})
	if err := db.SaveCAState(ctx, cur); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "readyz to be ok again", func() bool {
		st, _ := readyz()
		return st == 200
	})
}
