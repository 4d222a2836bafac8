package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// demoApps are the demo's three small services. They are plain HTTP
// servers on loopback that know nothing of TLS or identity: their sidecars
// do all of that. Each outgoing call goes to a loopback port of the
// caller's own sidecar and carries the x-request-id it was given plus a
// suffix, so the demo can find each hop in the sidecars' decision logs.
type demoApps struct {
	payments, orders, frontend string // listen addresses

	mu                  sync.Mutex
	ordersOut           string // frontend's outbound listener to orders
	paymentsOut         string // orders' outbound listener to payments
	tokenOut            string // orders' outbound listener to the server (token exchange with its SVID)
	servers             []*http.Server
	client              *http.Client
	lastExchangeFailure string
}

const (
	hdrRequestID  = "X-Request-Id"
	hdrDownstream = "X-Demo-Downstream"      // "<status> <request id>" of the call the app made
	hdrNested     = "X-Demo-Downstream-Next" // the same one hop further
)

func (d *demo) startApps() error {
	a := &demoApps{client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}}
	d.apps = a
	var err error
	if a.payments, err = a.serve(a.paymentsHandler()); err != nil {
		return err
	}
	if a.orders, err = a.serve(a.ordersHandler()); err != nil {
		return err
	}
	if a.frontend, err = a.serve(a.frontendHandler()); err != nil {
		return err
	}
	d.logf("started the apps: frontend %s, orders %s, payments %s (plain HTTP on loopback)", a.frontend, a.orders, a.payments)
	return nil
}

func (a *demoApps) setOutbound(ordersOut, paymentsOut, tokenOut string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ordersOut, a.paymentsOut, a.tokenOut = ordersOut, paymentsOut, tokenOut
}

func (a *demoApps) outs() (string, string, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ordersOut, a.paymentsOut, a.tokenOut
}

func (a *demoApps) serve(h http.Handler) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	a.servers = append(a.servers, srv)
	go srv.Serve(l)
	return l.Addr().String(), nil
}

func (a *demoApps) close() {
	for _, s := range a.servers {
		s.Close()
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// callerOf reads the caller's SPIFFE ID from the x-forwarded-client-cert
// header the sidecar set (the app trusts it because only its sidecar can
// reach it).
func callerOf(r *http.Request) string {
	xfcc := r.Header.Get("X-Forwarded-Client-Cert")
	for _, part := range strings.Split(xfcc, ";") {
		if v, ok := strings.CutPrefix(part, "URI="); ok {
			return v
		}
	}
	return ""
}

func (a *demoApps) paymentsHandler() http.Handler {
	m := http.NewServeMux()
	m.HandleFunc("POST /payments", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, map[string]string{"payment": "accepted", "caller": callerOf(r)})
	})
	return m
}

func (a *demoApps) ordersHandler() http.Handler {
	m := http.NewServeMux()
	m.HandleFunc("GET /orders/{id}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"order": r.PathValue("id"), "status": "shipped", "caller": callerOf(r)})
	})
	// The reports job's export: every order, about 1 MiB of it.
	m.HandleFunc("GET /orders/export", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		for i := range demoExportOrders {
			fmt.Fprintf(w, `{"order":%d,"status":"shipped","total_cents":%d,"items":%d,"note":"%0128d"}`+"\n", i, 1000+i*7%90000, 1+i%5, i)
		}
	})
	m.HandleFunc("DELETE /orders/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	// POST /orders takes the user's token (forwarded by the sidecar after
	// it verified it), exchanges it at the token service for a token whose
	// audience is payments — authenticating with orders' own SVID through
	// its sidecar, no secret — and pays with it.
	m.HandleFunc("POST /orders", func(w http.ResponseWriter, r *http.Request) {
		_, paymentsOut, tokenOut := a.outs()
		rid := r.Header.Get(hdrRequestID)
		userToken, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "no user token"})
			return
		}
		form := url.Values{
			"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
			"subject_token":      {userToken},
			"subject_token_type": {"urn:ietf:params:oauth:token-type:access_token"},
			"audience":           {"payments"},
		}
		resp, err := a.client.Post("http://"+tokenOut+"/oauth2/token", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
		if err != nil {
			writeJSON(w, http.StatusBadGateway, map[string]string{"error": "token exchange: " + err.Error()})
			return
		}
		var ex struct {
			AccessToken string `json:"access_token"`
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&ex)
		resp.Body.Close()
		if ex.AccessToken == "" {
			a.mu.Lock()
			a.lastExchangeFailure = fmt.Sprintf("%d %s %s", resp.StatusCode, ex.Error, ex.Description)
			a.mu.Unlock()
			writeJSON(w, http.StatusBadGateway, map[string]string{"error": "token exchange refused: " + ex.Error + ": " + ex.Description})
			return
		}
		req, _ := http.NewRequestWithContext(r.Context(), "POST", "http://"+paymentsOut+"/payments", strings.NewReader(`{"amount": 42}`))
		req.Header.Set("Authorization", "Bearer "+ex.AccessToken)
		req.Header.Set(hdrRequestID, rid+"-payments")
		status, _ := call(a.client, req)
		w.Header().Set(hdrDownstream, fmt.Sprintf("%d %s-payments", status, rid))
		if status != http.StatusCreated {
			writeJSON(w, http.StatusBadGateway, map[string]any{"error": "payment failed", "payments_status": status})
			return
		}
		writeJSON(w, http.StatusCreated, map[string]any{"order": "created", "payments_status": status})
	})
	return m
}

func (a *demoApps) frontendHandler() http.Handler {
	m := http.NewServeMux()
	m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "moatless demo shop: POST /checkout with a user's Bearer token; GET /orders/{id}")
	})
	m.HandleFunc("GET /orders/{id}", func(w http.ResponseWriter, r *http.Request) {
		ordersOut, _, _ := a.outs()
		req, _ := http.NewRequestWithContext(r.Context(), "GET", "http://"+ordersOut+"/orders/"+url.PathEscape(r.PathValue("id")), nil)
		req.Header.Set(hdrRequestID, r.Header.Get(hdrRequestID)+"-orders")
		status, _ := call(a.client, req)
		w.Header().Set(hdrDownstream, fmt.Sprintf("%d %s-orders", status, r.Header.Get(hdrRequestID)))
		w.WriteHeader(status)
	})
	// POST /checkout passes the signed-in user's token on to orders.
	m.HandleFunc("POST /checkout", func(w http.ResponseWriter, r *http.Request) {
		ordersOut, _, _ := a.outs()
		rid := r.Header.Get(hdrRequestID)
		req, _ := http.NewRequestWithContext(r.Context(), "POST", "http://"+ordersOut+"/orders", strings.NewReader(`{"item": "book"}`))
		if auth := r.Header.Get("Authorization"); auth != "" {
			req.Header.Set("Authorization", auth)
		}
		req.Header.Set(hdrRequestID, rid+"-orders")
		status, h := call(a.client, req)
		next := h.Get(hdrDownstream)
		w.Header().Set(hdrDownstream, fmt.Sprintf("%d %s-orders", status, rid))
		if next != "" {
			w.Header().Set(hdrNested, next)
		}
		if status != http.StatusCreated {
			writeJSON(w, http.StatusBadGateway, map[string]any{"error": "order failed", "orders_status": status})
			return
		}
		writeJSON(w, http.StatusCreated, map[string]any{"checkout": "done"})
	})
	return m
}

// call sends req and returns the status and headers of the answer, with
// its body drained; 0 and nil when no answer came.
func call(c *http.Client, req *http.Request) (int, http.Header) {
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}
