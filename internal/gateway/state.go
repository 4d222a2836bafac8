package gateway

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/gateway/validate"
	"github.com/moatless/moatless/internal/gateway/waf"
	"github.com/moatless/moatless/internal/proxy"
)

// state is one configuration compiled for the request path. It is
// immutable once built and replaced whole by Reload, so a request sees
// one configuration from start to end.
type state struct {
	cfg     config.Gateway
	routes  []*route
	table   *routeTable
	trusted []netip.Prefix
	allow   []netip.Prefix
	deny    []netip.Prefix
	headers []secHeader
	limits  map[string]*limiter
	// wafs are the compiled engines by configuration key.
	wafs   map[string]*waf.Engine
	cancel context.CancelFunc
}

// route is one compiled route.
type route struct {
	name    string
	host    string
	prefix  string
	cfg     config.GatewayRoute
	pool    *pool
	fwd     *proxy.Forwarder
	cors    *cors
	maxBody int64
	limits  []*limiter
	waf     *waf.Engine
	valid   validate.Validator
	// upgrades are the protocols a request may switch to.
	upgrades []string
}

func (s *state) stop() {
	if s != nil && s.cancel != nil {
		s.cancel()
	}
}

// build compiles cfg. old, when set, is the state in force, whose
// reusable parts (rate-limit counters, WAF engines) carry over.
func (g *Gateway) build(_ context.Context, cfg config.Gateway, old *state) (*state, error) {
	st := &state{cfg: cfg}
	parse := func(list []string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range list {
			p, _ := config.ParsePrefix(s) // validated
			out = append(out, p)
		}
		return out
	}
	st.trusted = parse(cfg.TrustedProxies)
	st.allow = parse(cfg.IP.Allow)
	st.deny = parse(cfg.IP.Deny)
	st.headers = securityHeaders(cfg.Headers)
	limits, err := g.limiters(&cfg, old)
	if err != nil {
		return nil, err
	}
	st.limits = limits

	hctx, cancel := context.WithCancel(context.Background())
	st.cancel = cancel
	for i := range cfg.Routes {
		rc := cfg.Routes[i]
		p, err := g.newPool(&rc)
		if err != nil {
			cancel()
			return nil, err
		}
		r := &route{name: rc.Name, host: canonicalHost(rc.Host), prefix: rc.PathPrefix, cfg: rc, pool: p, maxBody: cfg.Limits.MaxBodyBytes}
		if rc.MaxBodyBytes > 0 {
			r.maxBody = rc.MaxBodyBytes
		}
		r.upgrades = rc.Upgrades
		if r.upgrades == nil {
			r.upgrades = proxy.DefaultUpgrades
		}
		if rc.CORS != nil {
			r.cors = newCORS(rc.CORS)
		}
		for _, n := range rc.RateLimits {
			r.limits = append(r.limits, limits[n])
		}
		if rc.WAF != nil && rc.WAF.Enabled {
			e, err := st.wafFor(&cfg.WAF, rc.WAF.Exclusions, old)
			if err != nil {
				cancel()
				return nil, fmt.Errorf("gateway: route %s: %w", rc.Name, err)
			}
			r.waf = e
		}
		if v := rc.Validation; v != nil {
			val, err := g.validator(v)
			if err != nil {
				cancel()
				return nil, fmt.Errorf("gateway: route %s: %w", rc.Name, err)
			}
			r.valid = val
		}
		fwd, err := proxy.NewForwarder(proxy.ForwarderConfig{
			Name: "route-" + rc.Name, Transport: p, Host: rc.Name, Logger: g.log,
			OnError: func(w http.ResponseWriter, req *http.Request, err error) { g.upstreamFailed(w, req, r, err) },
		})
		if err != nil {
			cancel()
			return nil, err
		}
		r.fwd = fwd
		st.routes = append(st.routes, r)
	}
	st.table = newRouteTable(st.routes)
	for _, r := range st.routes {
		if r.pool.health != nil {
			g.wg.Add(1)
			go func() {
				defer g.wg.Done()
				r.pool.healthLoop(hctx)
			}()
		}
	}
	return st, nil
}

// wafFor returns the engine for the global WAF settings plus a route's
// exclusions: one per distinct configuration, carried over from old when
// unchanged (compiling the Core Rule Set takes a fraction of a second).
func (st *state) wafFor(c *config.GatewayWAF, routeExclusions []int, old *state) (*waf.Engine, error) {
	wc := waf.Config{
		Detect: c.Mode == "detect", Paranoia: c.ParanoiaLevel, Threshold: c.InboundAnomalyThreshold,
		Exclusions: append(slices.Clone(c.Exclusions), routeExclusions...), MaxInspectBytes: c.MaxInspectBytes,
	}
	k := wc.Key()
	if e := st.wafs[k]; e != nil {
		return e, nil
	}
	if st.wafs == nil {
		st.wafs = map[string]*waf.Engine{}
	}
	if old != nil {
		if e := old.wafs[k]; e != nil {
			st.wafs[k] = e
			return e, nil
		}
	}
	e, err := newWAF(wc)
	if err != nil {
		return nil, err
	}
	st.wafs[k] = e
	return e, nil
}

// newWAF compiles a WAF engine (waf.New). The package's tests hand out
// engines compiled for an equal waf.Config.Key instead (helpers_test.go):
// compiling the Core Rule Set takes seconds under -race.
var newWAF = waf.New

// validator loads a route's JSON Schema or OpenAPI document.
func (g *Gateway) validator(v *config.GatewayValidation) (validate.Validator, error) {
	path := v.JSONSchema
	if path == "" {
		path = v.OpenAPI
	}
	b, err := g.opts.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("validation: %w", err)
	}
	if v.JSONSchema != "" {
		return validate.NewJSONSchema(path, b)
	}
	return validate.NewOpenAPI(path, b)
}

// secHeader is a security header as a response's header map holds it.
// The value slice is made once per configuration and shared by every
// response (net/http only reads it; capacity 1, so an append copies).
type secHeader struct {
	name  string
	value []string
}

// securityHeaders is the list set on every response, defaults filled in;
// "off" leaves a header out.
func securityHeaders(h config.GatewayHeaders) []secHeader {
	out := []secHeader{{"X-Content-Type-Options", []string{"nosniff"}}}
	for _, kv := range [][3]string{
		{"Strict-Transport-Security", h.HSTS, "max-age=31536000; includeSubDomains"},
		{"Content-Security-Policy", h.CSP, "default-src 'none'; frame-ancestors 'none'"},
		{"X-Frame-Options", h.FrameOptions, "DENY"},
		{"Referrer-Policy", h.ReferrerPolicy, "no-referrer"},
		{"Permissions-Policy", h.PermissionsPolicy, "camera=(), microphone=(), geolocation=()"},
		{"Cross-Origin-Opener-Policy", h.CrossOriginOpenerPolicy, "same-origin"},
	} {
		v := kv[1]
		if v == "" {
			v = kv[2]
		}
		if strings.EqualFold(v, "off") {
			continue
		}
		out = append(out, secHeader{kv[0], []string{v}})
	}
	return out
}
