package server

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// livez answers 200 while the process serves.
func (s *Server) livez(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// readyz answers 200 when the server can do its job: serving, store
// reachable, server certificate valid, CA able to sign. ?verbose lists each
// check in the style of Kubernetes ("[+]store ok").
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	type check struct {
		name string
		err  error
	}
	var checks []check
	add := func(name string, err error) { checks = append(checks, check{name, err}) }
	if s.ready.Load() {
		add("serving", nil)
	} else {
		add("serving", fmt.Errorf("not serving yet or shutting down"))
	}
	add("store", s.db.SQL().PingContext(ctx))
	if c := s.cert.Load(); c == nil || s.now().After(c.tls.Leaf.NotAfter) {
		add("server-certificate", fmt.Errorf("expired"))
	} else {
		add("server-certificate", nil)
	}
	if len(s.ca.Bundle().X509Authorities()) == 0 {
		add("ca", fmt.Errorf("no X.509 authority"))
	} else {
		add("ca", nil)
	}
	// A replica that cannot follow the shared CA state signs with the one
	// it holds, which the others may have left (a key tainted or revoked
	// since): traffic should go to the replicas that follow it.
	add("ca-state", s.ca.Diverged())
	ok := true
	var b strings.Builder
	for _, c := range checks {
		if c.err != nil {
			ok = false
			fmt.Fprintf(&b, "[-]%s failed: %v\n", c.name, c.err)
		} else {
			fmt.Fprintf(&b, "[+]%s ok\n", c.name)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	if _, verbose := r.URL.Query()["verbose"]; verbose {
		fmt.Fprint(w, b.String())
	}
	if ok {
		fmt.Fprintln(w, "ok")
	} else {
		fmt.Fprintln(w, "not ready")
	}
}
