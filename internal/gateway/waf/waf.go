// Package waf inspects requests with Coraza and the OWASP Core Rule Set
// v4, embedded in the binary (nothing is fetched at run time).
//
// An Engine is compiled once per rule configuration (paranoia level,
// anomaly threshold, exclusions) and shared by every route that uses
// that configuration; compiling the Core Rule Set takes a fraction of a
// second. Inspecting a request costs under a millisecond of CPU for a GET
// and grows with the number of arguments (about 7 ms for a JSON body of
// 43 fields; docs/benchmarks.md): @rx runs on RE2, behind one RE2 Set of
// all the patterns per distinct string (rx.go); what remains is Coraza's
// per-rule, per-argument loop, a third of it a transformation cache that
// misses for every argument of a map-backed collection (upstream issue
// corazawaf/coraza#1681; what a fix buys is in docs/benchmarks.md). Only
// the request is inspected (phases 1 and 2): the gateway does not buffer
// answers.
package waf

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	coreruleset "github.com/corazawaf/coraza-coreruleset/v4"
	"github.com/corazawaf/coraza/v3"
)

// Config is the rule configuration of an Engine.
type Config struct {
	// Detect logs what would be blocked and blocks nothing.
	Detect bool
	// Paranoia is the CRS blocking paranoia level, 1 to 4.
	Paranoia int
	// Threshold is the inbound anomaly score that blocks; CRS default 5.
	Threshold int
	// Exclusions are rule IDs removed.
	Exclusions []int
	// MaxInspectBytes is the largest body the rules read. A blocking
	// engine refuses a longer body uninspected (Verdict.TooLarge): what
	// lies past the limit could hide anything ("pad=<128 KiB>&q=' or
	// 1=1" passed before). A detecting engine inspects the first
	// MaxInspectBytes and reports that it would block. Default 128 KiB.
	MaxInspectBytes int
}

// Key identifies the configuration: engines with equal keys are equal.
func (c Config) Key() string {
	ex := slices.Clone(c.Exclusions)
	slices.Sort(ex)
	return fmt.Sprintf("%v|%d|%d|%v|%d", c.Detect, c.Paranoia, c.Threshold, slices.Compact(ex), c.MaxInspectBytes)
}

// Engine is a compiled WAF. Safe for concurrent use.
type Engine struct {
	waf    coraza.WAF
	rx     *rxSet // nil: every @rx pattern runs on its own
	detect bool
	max    int
}

// New compiles the Core Rule Set with c.
func New(c Config) (*Engine, error) {
	if c.Paranoia < 1 || c.Paranoia > 4 {
		return nil, fmt.Errorf("waf: paranoia level %d is not 1 to 4", c.Paranoia)
	}
	if c.Threshold < 1 {
		return nil, fmt.Errorf("waf: anomaly threshold %d is not positive", c.Threshold)
	}
	if c.MaxInspectBytes <= 0 {
		c.MaxInspectBytes = 128 << 10
	}
	engine := "On"
	if c.Detect {
		engine = "DetectionOnly"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `Include @coraza.conf-recommended
SecRuleEngine %s
SecRequestBodyAccess On
SecRequestBodyLimit %d
SecRequestBodyInMemoryLimit %d
SecRequestBodyLimitAction ProcessPartial
SecResponseBodyAccess Off
SecAuditEngine Off
Include @crs-setup.conf.example
SecAction "id:900000,phase:1,pass,t:none,nolog,setvar:tx.blocking_paranoia_level=%d"
SecAction "id:900110,phase:1,pass,t:none,nolog,setvar:tx.inbound_anomaly_score_threshold=%d,setvar:tx.outbound_anomaly_score_threshold=4"
SecAction "id:900200,phase:1,pass,t:none,nolog,setvar:'tx.allowed_methods=GET HEAD POST OPTIONS PUT PATCH DELETE'"
Include @owasp_crs/*.conf
`, engine, c.MaxInspectBytes, c.MaxInspectBytes, c.Paranoia, c.Threshold)
	for _, id := range c.Exclusions {
		fmt.Fprintf(&b, "SecRuleRemoveById %d\n", id)
	}
	w, set, err := compileRules(func() (coraza.WAF, error) {
		return coraza.NewWAF(coraza.NewWAFConfig().WithRootFS(coreruleset.FS).WithDirectives(b.String()))
	})
	if err != nil {
		return nil, fmt.Errorf("waf: compile rules: %w", err)
	}
	return &Engine{waf: w, rx: set, detect: c.Detect, max: c.MaxInspectBytes}, nil
}

// Verdict is what the rules said about one request.
type Verdict struct {
	// Blocked: the request must be refused (never in detection mode).
	Blocked bool
	// WouldBlock: the anomaly score crossed the threshold (also set when
	// Blocked; in detection mode, what would have been blocked).
	WouldBlock bool
	// RuleIDs are the detection rules that matched, in order; they name
	// the attack without repeating any of the request.
	RuleIDs []int
	// TooLarge: the body is longer than MaxInspectBytes (with Blocked:
	// refused uninspected; answer 413).
	TooLarge bool
	// Malformed names what made the body unreadable to the rules alike
	// for every parser (see multipartOutside); "" when nothing did.
	Malformed string
}

// MaxInspectBytes is the largest body the engine inspects.
func (e *Engine) MaxInspectBytes() int { return e.max }

// Blocks reports whether the engine refuses what it detects (block
// mode), and so refuses a body longer than MaxInspectBytes.
func (e *Engine) Blocks() bool { return !e.detect }

// blockingEvaluation is the CRS rule that blocks once the inbound
// anomaly score reaches the threshold.
const blockingEvaluation = 949110

// Inspect runs the request line, headers and body (the first
// MaxInspectBytes of it) through the rules. client and server are the
// connection's addresses as the rules see them (REMOTE_ADDR is the client
// address the gateway decided on).
//
// A body that is a JSON document is inspected as JSON whatever the
// Content-Type says: many applications parse the body as JSON without
// looking at its type, and the body processor the type selects may see
// nothing of it (Coraza's XML processor reads "{...}" as text in which
// a \u0027 is no quote). When the declared type did not select the JSON
// processor, such a body is inspected a second time as application/json,
// and the request is refused when either reading crosses the threshold.
func (e *Engine) Inspect(r *http.Request, body []byte, client, server netip.AddrPort) (Verdict, error) {
	if len(body) > e.max {
		if !e.detect {
			return Verdict{Blocked: true, WouldBlock: true, TooLarge: true}, nil
		}
		v, err := e.inspect(r, body[:e.max], client, server, false)
		v.WouldBlock, v.TooLarge = true, true
		return v, err
	}
	if m := multipartOutside(r.Header, body); m != "" {
		return Verdict{Blocked: !e.detect, WouldBlock: true, Malformed: m}, nil
	}
	v, err := e.inspect(r, body, client, server, false)
	if err != nil || v.WouldBlock {
		return v, err
	}
	if jsonBody := asJSON(r.Header, body); jsonBody != nil {
		v2, err := e.inspect(r, jsonBody, client, server, true)
		if err != nil {
			return v2, err
		}
		v.Blocked, v.WouldBlock = v2.Blocked, v2.WouldBlock
		for _, id := range v2.RuleIDs {
			if len(v.RuleIDs) < 32 && !slices.Contains(v.RuleIDs, id) {
				v.RuleIDs = append(v.RuleIDs, id)
			}
		}
	}
	return v, nil
}

// multipartOutside reports a multipart body that parsers could split
// into different parts: content before the first delimiter (the
// preamble) or after the close delimiter (the epilogue), a line that
// starts like a delimiter but is not one ("--bx" for boundary "b"), or
// no close delimiter. RFC 2046 has the preamble and epilogue ignored and
// "--bx" read as content, as Coraza's parser does; parsers that take any
// line starting "--b" for a delimiter, or read on past "--b--", find
// parts there that the rules never saw as parts. Browsers and HTTP
// libraries send none of these. A multipart type without a boundary is
// left to the rules (a body-processor error to them).
func multipartOutside(h http.Header, body []byte) string {
	cts := h["Content-Type"]
	if len(cts) == 0 || !strings.HasPrefix(strings.ToLower(strings.TrimSpace(cts[0])), "multipart/") {
		return ""
	}
	_, params, err := mime.ParseMediaType(cts[0])
	if err != nil || params["boundary"] == "" {
		return ""
	}
	delim := []byte("--" + params["boundary"])
	if !bytes.HasPrefix(bytes.TrimLeft(body, "\r\n"), delim) {
		return "multipart content before the first delimiter"
	}
	closed := false
	for rest := body; len(rest) > 0; {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte("\n"))
		if closed {
			if len(bytes.Trim(line, " \t\r")) != 0 {
				return "multipart content after the close delimiter"
			}
			continue
		}
		if !bytes.HasPrefix(line, delim) {
			continue
		}
		switch string(bytes.TrimRight(line[len(delim):], " \t\r")) {
		case "":
		case "--":
			closed = true
		default:
			return "a multipart line that starts like the delimiter but is not one"
		}
	}
	if !closed {
		return "multipart body without its close delimiter"
	}
	return ""
}

// asJSON is the body to inspect a second time as JSON: body, without a
// UTF-8 byte order mark, when it is a JSON object or array and no
// Content-Type of h selects the JSON body processor (the rules of
// coraza.conf-recommended: application/json, application/*+json); nil
// otherwise.
func asJSON(h http.Header, body []byte) []byte {
	for _, ct := range h["Content-Type"] {
		ct = strings.ToLower(strings.TrimSpace(ct))
		mt, _, _ := strings.Cut(ct, ";")
		if strings.HasPrefix(ct, "application/json") || strings.HasPrefix(mt, "application/") && strings.HasSuffix(strings.TrimSpace(mt), "+json") {
			return nil
		}
	}
	b := bytes.TrimPrefix(body, []byte("\xef\xbb\xbf"))
	t := bytes.TrimLeft(b, " \t\r\n")
	if len(t) == 0 || t[0] != '{' && t[0] != '[' || !json.Valid(b) {
		return nil
	}
	return b
}

// inspect is one pass of the rules; asJSON replaces the request's
// Content-Type with application/json.
func (e *Engine) inspect(r *http.Request, body []byte, client, server netip.AddrPort, asJSON bool) (Verdict, error) {
	tx := e.waf.NewTransaction()
	e.rx.begin(tx)
	defer func() {
		tx.ProcessLogging()
		e.rx.end(tx)
		tx.Close()
	}()
	tx.ProcessConnection(client.Addr().String(), int(client.Port()), server.Addr().String(), int(server.Port()))
	tx.ProcessURI(r.RequestURI, r.Method, r.Proto)
	tx.AddRequestHeader("Host", r.Host)
	for k, vv := range r.Header {
		if asJSON && k == "Content-Type" {
			continue
		}
		for _, v := range vv {
			tx.AddRequestHeader(k, v)
		}
	}
	if asJSON {
		tx.AddRequestHeader("Content-Type", "application/json")
	}
	if r.ContentLength >= 0 && r.Header.Get("Content-Length") == "" && len(body) > 0 {
		tx.AddRequestHeader("Content-Length", strconv.Itoa(len(body)))
	}
	it := tx.ProcessRequestHeaders()
	if it == nil && len(body) > 0 {
		if len(body) > e.max {
			body = body[:e.max]
		}
		var err error
		if it, _, err = tx.WriteRequestBody(body); err != nil {
			return Verdict{}, fmt.Errorf("waf: %w", err)
		}
	}
	if it == nil {
		var err error
		if it, err = tx.ProcessRequestBody(); err != nil {
			return Verdict{}, fmt.Errorf("waf: %w", err)
		}
	}
	v := Verdict{Blocked: it != nil}
	for _, mr := range tx.MatchedRules() {
		id := mr.Rule().ID()
		if id == blockingEvaluation {
			v.WouldBlock = true
		}
		// Rules with a message detect something; the 980xxx ones only
		// report the score.
		if mr.Message() == "" || id >= 980000 && id < 990000 {
			continue
		}
		if len(v.RuleIDs) < 32 && !slices.Contains(v.RuleIDs, id) {
			v.RuleIDs = append(v.RuleIDs, id)
		}
	}
	if it != nil {
		v.WouldBlock = true
		if !slices.Contains(v.RuleIDs, it.RuleID) && len(v.RuleIDs) < 32 {
			v.RuleIDs = append(v.RuleIDs, it.RuleID)
		}
	}
	return v, nil
}
