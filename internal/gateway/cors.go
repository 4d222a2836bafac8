package gateway

import (
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/moatless/moatless/internal/config"
)

// cors answers preflights for a route and marks responses to allowed
// origins (the Fetch standard's CORS protocol). An origin not listed gets
// no CORS header at all, so the browser refuses the page the answer.
type cors struct {
	origins    map[string]bool
	any        bool
	methods    map[string]bool
	methodList string
	headers    map[string]bool
	expose     string
	creds      bool
	maxAge     string
}

// safelisted request headers need no permission (Fetch's CORS-safelisted
// request headers; Content-Type is listed by default).
var safelisted = []string{"accept", "accept-language", "content-language"}

func newCORS(c *config.GatewayCORS) *cors {
	x := &cors{origins: map[string]bool{}, methods: map[string]bool{}, headers: map[string]bool{}, creds: c.Credentials}
	for _, o := range c.Origins {
		if o == "*" {
			x.any = true
		}
		x.origins[o] = true
	}
	methods := c.Methods
	if len(methods) == 0 {
		methods = []string{"GET", "HEAD", "POST"}
	}
	for i, m := range methods {
		methods[i] = strings.ToUpper(m)
		x.methods[methods[i]] = true
	}
	x.methodList = strings.Join(methods, ", ")
	hs := c.Headers
	if len(hs) == 0 {
		hs = []string{"Content-Type", "Authorization"}
	}
	for _, h := range append(hs, safelisted...) {
		x.headers[strings.ToLower(h)] = true
	}
	x.expose = strings.Join(c.ExposeHeaders, ", ")
	x.maxAge = strconv.Itoa(int(c.MaxAge.Std().Seconds()))
	return x
}

func (c *cors) allowed(origin string) bool {
	return origin != "" && (c.origins[origin] || c.any)
}

// isPreflight reports an OPTIONS request asking for CORS permission.
func isPreflight(r *http.Request) bool {
	return r.Method == http.MethodOptions && r.Header.Get("Origin") != "" && r.Header.Get("Access-Control-Request-Method") != ""
}

// preflight checks the origin, method and headers asked for. ok false
// means refuse (403, no CORS headers); allowHeaders is what to grant.
func (c *cors) preflight(r *http.Request) (allowHeaders string, ok bool) {
	if !c.allowed(r.Header.Get("Origin")) {
		return "", false
	}
	m := r.Header.Get("Access-Control-Request-Method")
	if !c.methods[m] {
		return "", false
	}
	var granted []string
	for _, v := range r.Header.Values("Access-Control-Request-Headers") {
		for h := range strings.SplitSeq(v, ",") {
			h = strings.ToLower(strings.TrimSpace(h))
			if h == "" {
				continue
			}
			if !c.headers[h] {
				return "", false
			}
			if !slices.Contains(granted, h) {
				granted = append(granted, h)
			}
		}
	}
	return strings.Join(granted, ", "), true
}

// writePreflight adds the grant to h.
func (c *cors) writePreflight(h http.Header, origin, allowHeaders string) {
	h.Set("Access-Control-Allow-Methods", c.methodList)
	if allowHeaders != "" {
		h.Set("Access-Control-Allow-Headers", allowHeaders)
	}
	h.Set("Access-Control-Max-Age", c.maxAge)
	h.Add("Vary", "Access-Control-Request-Method")
	h.Add("Vary", "Access-Control-Request-Headers")
}

// decorate sets the CORS response headers for origin (from the request)
// on any response: the gateway is the only source of them on this route,
// the upstream's are removed.
// The preflight grant (methods, headers, max age) is kept only on the
// gateway's own preflight answer.
func (c *cors) decorate(h http.Header, origin string, preflight bool) {
	for k := range h {
		if strings.HasPrefix(k, "Access-Control-") && !(preflight && c.allowed(origin)) {
			delete(h, k)
		}
	}
	h.Add("Vary", "Origin")
	if !c.allowed(origin) {
		return
	}
	if c.any && !c.creds {
		h.Set("Access-Control-Allow-Origin", "*")
	} else {
		h.Set("Access-Control-Allow-Origin", origin)
	}
	if c.creds {
		h.Set("Access-Control-Allow-Credentials", "true")
	}
	if c.expose != "" {
		h.Set("Access-Control-Expose-Headers", c.expose)
	}
}
