package cli

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/token"
)

const (
	demoUser     = "alice"
	demoPassword = "correct horse battery staple"
)

// setUpTokens registers the browser app, orders as a workload client that
// may exchange user tokens for payments (authenticated by its SVID, no
// secret), and the user alice.
func (d *demo) setUpTokens(ctx context.Context) error {
	clients := []token.ClientRequest{
		{Name: "webapp", ClientSpec: token.ClientSpec{
			AuthMethod:   token.AuthNone,
			GrantTypes:   []string{token.GrantAuthorizationCode},
			RedirectURIs: []string{d.redirectURI()},
			Scopes:       []string{"openid"},
			Audiences:    []string{"orders"},
		}},
		{Name: "orders", ClientSpec: token.ClientSpec{
			AuthMethod:        token.AuthTLSClient,
			SPIFFEID:          demoID("orders"),
			GrantTypes:        []string{token.GrantTokenExchange},
			ExchangeAudiences: []string{"payments"},
		}},
	}
	for _, c := range clients {
		if err := d.admin.do(ctx, "POST", token.AdminPathPrefix+"clients", c, nil); err != nil {
			return fmt.Errorf("create OAuth client %s: %w", c.Name, err)
		}
	}
	u := token.UserRequest{Name: demoUser, Password: demoPassword, UserSpec: token.UserSpec{Roles: []string{"buyer"}}}
	if err := d.admin.do(ctx, "POST", token.AdminPathPrefix+"users", u, nil); err != nil {
		return fmt.Errorf("create user %s: %w", demoUser, err)
	}
	d.logf("registered OAuth clients webapp (code + PKCE) and orders (its SVID, may exchange for payments); user %s (role buyer)", demoUser)
	return nil
}

func (d *demo) redirectURI() string { return "http://" + d.apps.frontend + "/callback" }

var loginTxRE = regexp.MustCompile(`name="tx" value="([^"]+)"`)

// login signs alice in as her browser would: authorization request with
// PKCE, the login form, the redirect back with a code, the code redeemed.
func (d *demo) login(ctx context.Context) (string, error) {
	jar, _ := cookiejar.New(nil)
	redirect := d.redirectURI()
	var code string
	browser := &http.Client{Jar: jar, Transport: d.https.Transport, Timeout: 10 * time.Second,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if strings.HasPrefix(req.URL.String(), redirect) {
				code = req.URL.Query().Get("code")
				return http.ErrUseLastResponse
			}
			return nil
		}}
	verifier := randomString(32)
	sum := sha256.Sum256([]byte(verifier))
	q := url.Values{
		"response_type":         {"code"},
		"client_id":             {"webapp"},
		"redirect_uri":          {redirect},
		"scope":                 {"openid"},
		"state":                 {randomString(16)},
		"nonce":                 {randomString(16)},
		"code_challenge":        {base64.RawURLEncoding.EncodeToString(sum[:])},
		"code_challenge_method": {"S256"},
	}
	page, err := getBody(browser, d.issuer+"/oauth2/authorize?"+q.Encode())
	if err != nil {
		return "", fmt.Errorf("authorize: %w", err)
	}
	m := loginTxRE.FindStringSubmatch(page)
	if m == nil {
		return "", fmt.Errorf("authorize: no login form in the answer")
	}
	resp, err := browser.PostForm(d.issuer+"/oauth2/login", url.Values{"tx": {m[1]}, "username": {demoUser}, "password": {demoPassword}})
	if err != nil {
		return "", fmt.Errorf("login: %w", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if code == "" {
		return "", fmt.Errorf("login: no code came back (status %d)", resp.StatusCode)
	}
	resp, err = d.https.PostForm(d.issuer+"/oauth2/token", url.Values{
		"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect},
		"client_id": {"webapp"}, "code_verifier": {verifier},
	})
	if err != nil {
		return "", fmt.Errorf("redeem code: %w", err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
	}
	json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&tok)
	if tok.AccessToken == "" {
		return "", fmt.Errorf("redeem code: %d %s", resp.StatusCode, tok.Error)
	}
	return tok.AccessToken, nil
}

func getBody(c *http.Client, u string) (string, error) {
	resp, err := c.Get(u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return string(b), err
}

func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// outcome names what a caller saw: the sidecars answer 403 for a policy
// denial and 401 for an invalid token; a refused handshake or connection
// shows as no answer (0) or the outbound sidecar's 502/503.
func outcome(status int) string {
	switch {
	case status >= 200 && status < 300:
		return "allow"
	case status == http.StatusForbidden:
		return "deny"
	case status == http.StatusUnauthorized:
		return "unauthenticated"
	case status == 0 || status == http.StatusBadGateway || status == http.StatusServiceUnavailable:
		return "refused"
	default:
		return strconv.Itoa(status)
	}
}

// decision finds the decision a sidecar logged for a request ID and
// formats it as "policy (rule N)" or the reason when no policy decided.
func (d *demo) decision(sidecar, rid string) string {
	return findLogLine(d.sidecars[sidecar].logPath, rid, func(line []byte) (string, bool) {
		var ev struct {
			Msg       string `json:"msg"`
			RequestID string `json:"request_id"`
			Policy    string `json:"policy"`
			Rule      int    `json:"rule"`
			Reason    string `json:"reason"`
		}
		if json.Unmarshal(line, &ev) != nil || ev.Msg != "decision" || ev.RequestID != rid {
			return "", false
		}
		switch {
		case ev.Policy != "" && ev.Rule >= 0:
			return fmt.Sprintf("%s (rule %d)", ev.Policy, ev.Rule), true
		case ev.Policy != "":
			return ev.Policy, true
		}
		return ev.Reason, true
	})
}

// findLogLine polls a process's JSON log, for up to two seconds, for a
// line holding rid that match accepts, and returns what match made of it,
// "-" when none came.
func findLogLine(path, rid string, match func(line []byte) (string, bool)) string {
	found := "-"
	waitUntil(context.Background(), 2*time.Second, "log line", func() bool {
		f, err := os.Open(path)
		if err != nil {
			return false
		}
		defer f.Close()
		s := bufio.NewScanner(f)
		s.Buffer(make([]byte, 64<<10), 1<<20)
		for s.Scan() {
			if !strings.Contains(s.Text(), rid) {
				continue
			}
			if v, ok := match(s.Bytes()); ok {
				if v != "" {
					found = v
				}
				return true
			}
		}
		return false
	})
	return found
}

// script makes the calls and returns the table.
func (d *demo) script(ctx context.Context) ([]demoRow, error) {
	plain := &http.Client{Timeout: 10 * time.Second}
	pay, ord := d.sidecars["payments"], d.sidecars["orders"]
	var rows []demoRow
	step := 0
	send := func(addr, method, path, bearer, rid string) (int, http.Header) {
		req, _ := http.NewRequestWithContext(ctx, method, "http://"+addr+path, strings.NewReader(""))
		req.Header.Set(hdrRequestID, rid)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		return call(plain, req)
	}
	// hop makes one call from caller's outbound listener to callee and
	// records the row, with the decision from callee's sidecar.
	hop := func(caller, callee, method, path, bearer, expected, note string) {
		step++
		rid := fmt.Sprintf("demo-%d", step)
		status, _ := send(d.sidecars[caller].outbound[callee], method, path, bearer, rid)
		rows = append(rows, demoRow{Step: step, Caller: caller, Callee: callee, Method: method, Path: path,
			Note: note, Expected: expected, Result: outcome(status), Policy: d.decisionFor(callee, rid, status)})
	}
	d.logf("making the scripted calls")

	hop("frontend", "orders", "GET", "/orders/42", "", "allow", "")
	hop("frontend", "orders", "DELETE", "/orders/42", "", "deny", "wrong method: orders allows frontend GET /orders/* and POST /orders only")
	hop("frontend", "payments", "POST", "/payments", "", "deny", "wrong caller: only orders may call payments")

	// A plaintext caller straight at payments' port: STRICT mTLS refuses
	// the connection before any HTTP is read.
	step++
	status, _ := send(pay.inbound, "POST", "/payments", "", fmt.Sprintf("demo-%d", step))
	rows = append(rows, demoRow{Step: step, Caller: "(plaintext)", Callee: "payments", Method: "POST", Path: "/payments",
		Note: "no client certificate: PeerAuthentication STRICT (istio-system/default) refuses the connection", Expected: "refused", Result: outcome(status), Policy: "istio-system/default (STRICT)"})

	// alice signs in and checks out: browser → gateway (TLS, WAF, limits,
	// her token verified) → frontend (mTLS from the gateway only) →
	// orders (her token, verified by orders' sidecar) →
	// payments (a token exchanged by orders for audience payments, with
	// act.sub = orders' SPIFFE ID).
	userToken, err := d.login(ctx)
	if err != nil {
		return nil, err
	}
	d.logf("%s signed in (authorization code + PKCE on the server's login page)", demoUser)
	checkout := func(note, expectEdge, expectOrders, expectPayments string) {
		step++
		// Through the gateway, which gives the request its ID: the
		// frontend's sidecar logs its decision under that one.
		status, h, rid := d.viaGateway(ctx, "POST", "/checkout", userToken, nil, "")
		var decided string
		if status == http.StatusCreated || status == http.StatusBadGateway {
			decided = d.decisionFor("frontend", rid, status)
		} else {
			decided = d.gatewayBlock(rid) // refused at the edge
		}
		rows = append(rows, demoRow{Step: step, Caller: demoUser + " (browser)", Callee: "frontend (via gateway)", Method: "POST", Path: "/checkout",
			Note: note, Expected: expectEdge, Result: outcome(status), Policy: decided})
		if expectOrders == "" {
			return
		}
		st, nrid := parseDownstream(h.Get(hdrDownstream))
		step++
		rows = append(rows, demoRow{Step: step, Caller: "frontend", Callee: "orders", Method: "POST", Path: "/orders",
			Note: "with " + demoUser + "'s token", Expected: expectOrders, Result: outcome(st), Policy: d.decisionFor("orders", nrid, st)})
		if expectPayments == "" {
			return
		}
		st, nrid = parseDownstream(h.Get(hdrNested))
		step++
		note = "with a token orders obtained by RFC 8693 exchange (aud payments, act.sub orders)"
		if st == 0 && nrid == "" {
			d.apps.mu.Lock()
			note = "token exchange failed: " + d.apps.lastExchangeFailure
			d.apps.mu.Unlock()
		}
		rows = append(rows, demoRow{Step: step, Caller: "orders", Callee: "payments", Method: "POST", Path: "/payments",
			Note: note, Expected: expectPayments, Result: outcome(st), Policy: d.decisionFor("payments", nrid, st)})
	}
	checkout("", "allow", "allow", "allow")
	hop("frontend", "orders", "POST", "/orders", "", "deny", "no user token: POST /orders needs a request principal with role buyer")

	// reports may read orders; then it is compromised: it probes and
	// pulls bulk data, is detected and isolated by the playbook, and
	// orders' sidecar cuts its live connection.
	hop("reports", "orders", "GET", "/orders/42", "", "allow", "")
	more, err := d.compromise(ctx, step, send)
	if err != nil {
		return nil, err
	}
	rows = append(rows, more...)
	step += len(more)
	note := "isolated: every sidecar refuses its SPIFFE ID, and its own sidecar cuts its egress"
	if n := countLines(ord.logPath, "closed connections of revoked identities"); n > 0 {
		note += "; orders' sidecar closed its live connection"
	}
	hop("reports", "orders", "GET", "/orders/42", "", "refused", note)
	rows[len(rows)-1].Policy = "revoked identity"

	// alice's token is revoked at the token service: every sidecar has
	// the jti within a second and refuses it at the edge.
	tf := struct {
		Token string `json:"token"`
	}{userToken}
	start := time.Now()
	var cut time.Duration
	if err := d.admin.do(ctx, "POST", token.AdminPathPrefix+"tokens/revoke", tf, nil); err != nil {
		return nil, fmt.Errorf("revoke %s's token: %w", demoUser, err)
	}
	waitUntil(ctx, 5*time.Second, "the token revocation to reach the gateway", func() bool {
		st, _, _ := d.viaGateway(ctx, "GET", "/", userToken, nil, "")
		cut = time.Since(start)
		return st == http.StatusUnauthorized
	})
	checkout(fmt.Sprintf("after \"moatless oauth token revoke\": refused %v later, long before it expires", cut.Round(time.Millisecond)), "unauthenticated", "", "")
	rows = append(rows, d.secretsRows(ctx, step)...)
	rows = append(rows, d.gatewayRows(ctx, len(rows))...)
	return rows, nil
}

// decisionFor is the deciding policy for a request a sidecar answered,
// or why there was no decision.
func (d *demo) decisionFor(sidecar, rid string, status int) string {
	if status == 0 || rid == "" {
		return "-"
	}
	return d.decision(sidecar, rid)
}

// parseDownstream splits "<status> <request id>".
func parseDownstream(v string) (int, string) {
	s, rid, _ := strings.Cut(v, " ")
	n, _ := strconv.Atoi(s)
	return n, rid
}

func countLines(path, substr string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), substr)
}
