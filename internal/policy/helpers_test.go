package policy

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"

	securityv1beta1 "istio.io/api/security/v1beta1"
)

// mustSet parses and compiles YAML or fails the test.
func mustSet(t testing.TB, yamlText string, opts Options) *Set {
	t.Helper()
	docs, err := Parse(strings.NewReader(yamlText))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	s, err := Compile(docs, opts)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return s
}

// req builds a request in a compact, readable way for tables.
type reqOpt func(*Request)

func newReq(opts ...reqOpt) *Request {
	r := &Request{
		Protocol:    HTTP,
		Method:      "GET",
		Path:        "/",
		Host:        "svc.example",
		Headers:     http.Header{},
		Destination: Destination{Namespace: "foo", Labels: map[string]string{"app": "httpbin"}, Port: 8080},
		Source:      Source{Principal: "cluster.local/ns/default/sa/sleep", IP: netip.MustParseAddr("10.0.0.1")},
	}
	for _, o := range opts {
		o(r)
	}
	return r
}

func from(principal string) reqOpt { return func(r *Request) { r.Source.Principal = principal } }
func plaintext() reqOpt            { return from("") }
func method(m string) reqOpt       { return func(r *Request) { r.Method = m } }
func path(p string) reqOpt         { return func(r *Request) { r.Path = p } }
func host(h string) reqOpt         { return func(r *Request) { r.Host = h } }
func tcp() reqOpt {
	return func(r *Request) { r.Protocol = TCP; r.Method, r.Path, r.Host = "", "", "" }
}
func port(p int) reqOpt         { return func(r *Request) { r.Destination.Port = p } }
func srcIP(ip string) reqOpt    { return func(r *Request) { r.Source.IP = netip.MustParseAddr(ip) } }
func remoteIP(ip string) reqOpt { return func(r *Request) { r.RemoteIP = netip.MustParseAddr(ip) } }
func dstIP(ip string) reqOpt    { return func(r *Request) { r.Destination.IP = netip.MustParseAddr(ip) } }
func sni(s string) reqOpt       { return func(r *Request) { r.SNI = s } }
func dst(ns string, labels ...string) reqOpt {
	return func(r *Request) {
		r.Destination.Namespace = ns
		r.Destination.Labels = map[string]string{}
		for i := 0; i+1 < len(labels); i += 2 {
			r.Destination.Labels[labels[i]] = labels[i+1]
		}
	}
}
func header(k string, vs ...string) reqOpt {
	return func(r *Request) {
		for _, v := range vs {
			r.Headers.Add(k, v)
		}
	}
}
func auth(a *Auth) reqOpt { return func(r *Request) { r.Auth = a } }

// jwt is a verified token as the authn package would return it.
func jwt(iss, sub string, claims map[string]any) *Auth {
	c := map[string]any{"iss": iss, "sub": sub}
	for k, v := range claims {
		c[k] = v
	}
	a := &Auth{Principal: iss + "/" + sub, Claims: c}
	switch aud := c["aud"].(type) {
	case string:
		a.Audiences = []string{aud}
	case []any:
		for _, x := range aud {
			if s, ok := x.(string); ok {
				a.Audiences = append(a.Audiences, s)
			}
		}
	}
	a.Presenter, _ = c["azp"].(string)
	return a
}

type securityv1beta1JWTRule = securityv1beta1.JWTRule

// verifierFunc is a JWTVerifier as a function, the fake the tests need.
type verifierFunc func(rules []*securityv1beta1.JWTRule, r *Request) (*Auth, error)

func (f verifierFunc) Verify(rules []*securityv1beta1.JWTRule, r *Request) (*Auth, error) {
	return f(rules, r)
}
