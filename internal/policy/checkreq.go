package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/textproto"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxCheckRequestSize bounds a request file for "moatless policy check".
const MaxCheckRequestSize = 1 << 20

// CheckRequest is the JSON form of a request that "moatless policy check"
// (and anything else deciding offline) reads:
//
//	{"source": {"principal": "spiffe://td/ns/prod/sa/orders", "ip": "10.1.2.3"},
//	 "destination": {"namespace": "prod", "labels": {"app": "payments"}, "port": 8080, "ip": "10.1.9.9"},
//	 "request": {"protocol": "http", "method": "POST", "path": "/api/v1/payments/42?x=1",
//	             "host": "payments.prod", "headers": {"authorization": "Bearer ..."}}}
//
// source.principal "" is a plaintext peer. Optional extras:
// source.remote_ip (the original client behind a gateway),
// source.cert_sha256 (the peer certificate's thumbprint, see
// Source.CertSHA256: needed to check a certificate-bound token) and
// connection.sni. A header value may be a string or a list of strings.
type CheckRequest struct {
	Source struct {
		Principal string `json:"principal"`
		IP        string `json:"ip,omitempty"`
		RemoteIP  string `json:"remote_ip,omitempty"`
		// CertSHA256 is base64url without padding, 43 characters.
		CertSHA256 string `json:"cert_sha256,omitempty"`
	} `json:"source"`
	Destination struct {
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels,omitempty"`
		Port      int               `json:"port"`
		IP        string            `json:"ip,omitempty"`
	} `json:"destination"`
	Request struct {
		Protocol string                     `json:"protocol,omitempty"`
		Method   string                     `json:"method,omitempty"`
		Path     string                     `json:"path,omitempty"`
		Host     string                     `json:"host,omitempty"`
		Headers  map[string]json.RawMessage `json:"headers,omitempty"`
	} `json:"request"`
	Connection struct {
		SNI string `json:"sni,omitempty"`
	} `json:"connection,omitzero"`
}

// ErrBadCheckRequest is what ParseCheckRequest's errors wrap.
var ErrBadCheckRequest = errors.New("invalid request")

// ParseCheckRequest reads and validates a CheckRequest strictly (unknown
// fields, trailing data and bad values are errors naming the field) and
// returns it as a Request, ready for Evaluate.
func ParseCheckRequest(r io.Reader) (*Request, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxCheckRequestSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCheckRequest, err)
	}
	if len(data) > MaxCheckRequestSize {
		return nil, fmt.Errorf("%w: larger than %d KiB", ErrBadCheckRequest, MaxCheckRequestSize>>10)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var cr CheckRequest
	if err := dec.Decode(&cr); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCheckRequest, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: unexpected data after the JSON object", ErrBadCheckRequest)
	}
	return cr.ToRequest()
}

// ToRequest validates cr and converts it.
func (cr *CheckRequest) ToRequest() (*Request, error) {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrBadCheckRequest, field, fmt.Sprintf(format, args...))
	}
	req := &Request{Headers: http.Header{}}

	if p := cr.Source.Principal; p != "" {
		id, err := spiffeid.FromString(p)
		if err != nil {
			return nil, bad("source.principal", "%q is not a SPIFFE ID (spiffe://trust-domain/path), nor \"\" for a plaintext peer: %v", p, err)
		}
		// Istio writes principals without the scheme.
		req.Source.Principal = strings.TrimPrefix(id.String(), "spiffe://")
	}
	var err error
	if req.Source.IP, err = optionalAddr(cr.Source.IP); err != nil {
		return nil, bad("source.ip", "%v", err)
	}
	if req.RemoteIP, err = optionalAddr(cr.Source.RemoteIP); err != nil {
		return nil, bad("source.remote_ip", "%v", err)
	}
	if c := cr.Source.CertSHA256; c != "" {
		if b, err := base64.RawURLEncoding.Strict().DecodeString(c); err != nil || len(b) != sha256.Size {
			return nil, bad("source.cert_sha256", "%q is not a certificate thumbprint (base64url without padding of a SHA-256, 43 characters)", c)
		}
		if req.Source.Principal == "" {
			return nil, bad("source.cert_sha256", "a plaintext peer (no source.principal) has no certificate")
		}
		req.Source.CertSHA256 = c
	}

	d := cr.Destination
	if d.Namespace == "" || len(d.Namespace) > 63 || !dns1123Label.MatchString(d.Namespace) {
		return nil, bad("destination.namespace", "%q is not a namespace name (required)", d.Namespace)
	}
	if d.Port < 1 || d.Port > 65535 {
		return nil, bad("destination.port", "%d is not a port (1-65535, required)", d.Port)
	}
	for k := range d.Labels {
		if k == "" {
			return nil, bad("destination.labels", "empty label name")
		}
	}
	req.Destination = Destination{Namespace: d.Namespace, Labels: d.Labels, Port: d.Port}
	if req.Destination.IP, err = optionalAddr(d.IP); err != nil {
		return nil, bad("destination.ip", "%v", err)
	}
	req.SNI = cr.Connection.SNI

	q := cr.Request
	switch strings.ToLower(q.Protocol) {
	case "", "http", "http2", "grpc":
		req.Protocol = HTTP
		if q.Method == "" {
			return nil, bad("request.method", "required for HTTP (GET, POST, ...)")
		}
		for i := 0; i < len(q.Method); i++ {
			if !isTokenChar(q.Method[i]) {
				return nil, bad("request.method", "%q is not an HTTP method", q.Method)
			}
		}
		if q.Path == "" || q.Path[0] != '/' {
			return nil, bad("request.path", "%q must start with \"/\" (required for HTTP)", q.Path)
		}
		if strings.ContainsAny(q.Host, " \r\n\t/") {
			return nil, bad("request.host", "%q is not a host", q.Host)
		}
		req.Method, req.Path, req.Host = q.Method, q.Path, q.Host
		for name, raw := range q.Headers {
			if name == "" || strings.HasPrefix(name, ":") {
				return nil, bad("request.headers", "%q is not a header name (set host, method and path in their own fields)", name)
			}
			for i := 0; i < len(name); i++ {
				if !isTokenChar(name[i]) {
					return nil, bad("request.headers", "%q is not a header name", name)
				}
			}
			var one string
			var many []string
			if err := json.Unmarshal(raw, &one); err == nil {
				many = []string{one}
			} else if err := json.Unmarshal(raw, &many); err != nil {
				return nil, bad("request.headers."+name, "must be a string or a list of strings")
			}
			for _, v := range many {
				if strings.ContainsAny(v, "\r\n\x00") {
					return nil, bad("request.headers."+name, "value holds a line break or NUL")
				}
				if strings.EqualFold(name, "host") {
					return nil, bad("request.headers.host", "set request.host instead")
				}
				req.Headers.Add(textproto.CanonicalMIMEHeaderKey(name), v)
			}
		}
	case "tcp":
		req.Protocol = TCP
		if q.Method != "" || q.Path != "" || q.Host != "" || len(q.Headers) > 0 {
			return nil, bad("request", "a tcp request has no method, path, host or headers")
		}
	default:
		return nil, bad("request.protocol", "%q: want \"http\" or \"tcp\"", q.Protocol)
	}
	return req, nil
}

func optionalAddr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return a, nil
}
