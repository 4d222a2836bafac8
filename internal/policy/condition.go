package policy

import (
	"fmt"
	"net/textproto"
	"strings"
)

// attrKind is one request attribute a rule can test.
type attrKind uint8

const (
	attrPrincipal        attrKind = iota // source.principal, from.source.principals
	attrNamespace                        // source.namespace, from.source.namespaces
	attrServiceAccount                   // source.serviceAccount, from.source.serviceAccounts
	attrTrustDomain                      // source.trustDomain, from.source.trustDomains
	attrSourceIP                         // source.ip, from.source.ipBlocks
	attrRemoteIP                         // remote.ip, from.source.remoteIpBlocks
	attrRequestPrincipal                 // request.auth.principal, from.source.requestPrincipals
	attrAudiences                        // request.auth.audiences
	attrPresenter                        // request.auth.presenter
	attrClaim                            // request.auth.claims[a][b]
	attrHeader                           // request.headers[name]
	attrHost                             // to.operation.hosts
	attrMethod                           // to.operation.methods
	attrPath                             // to.operation.paths
	attrPort                             // destination.port, to.operation.ports
	attrDestIP                           // destination.ip
	attrSNI                              // connection.sni
)

// httpOnly reports attributes that do not exist on raw TCP traffic. Istio
// drops them from DENY, AUDIT and CUSTOM rules on TCP (the rule applies
// more widely) and skips ALLOW rules that use them (the rule applies to
// nothing).
func (k attrKind) httpOnly() bool {
	switch k {
	case attrRequestPrincipal, attrAudiences, attrPresenter, attrClaim, attrHeader, attrHost, attrMethod, attrPath:
		return true
	}
	return false
}

// Condition keys, as Istio spells them.
const (
	keyRequestHeaders   = "request.headers"
	keySourceIP         = "source.ip"
	keyRemoteIP         = "remote.ip"
	keySourceNamespace  = "source.namespace"
	keySourcePrincipal  = "source.principal"
	keySourceSA         = "source.serviceAccount"
	keySourceTD         = "source.trustDomain"
	keyRequestPrincipal = "request.auth.principal"
	keyRequestAudiences = "request.auth.audiences"
	keyRequestPresenter = "request.auth.presenter"
	keyRequestClaims    = "request.auth.claims"
	keyDestIP           = "destination.ip"
	keyDestPort         = "destination.port"
	keyConnSNI          = "connection.sni"
	keyEnvoyFilters     = "experimental.envoy.filters."
)

// maxClaimDepth bounds request.auth.claims[a][b]... nesting.
const maxClaimDepth = 16

// condKey is a parsed `when` key.
type condKey struct {
	kind   attrKind
	header string   // canonical header name, or a pseudo-header (":authority")
	claim  []string // claim path
}

// parseConditionKey reads a `when` key. Every key on Istio's "Authorization
// Policy Conditions" page is accepted except experimental.envoy.filters.*,
// which reads Envoy filter metadata that does not exist outside Envoy; the
// keys Istio retired (destination.labels, destination.name, ...) are
// rejected with Istio's own explanation.
func parseConditionKey(key string) (condKey, error) {
	switch key {
	case keySourceIP:
		return condKey{kind: attrSourceIP}, nil
	case keyRemoteIP:
		return condKey{kind: attrRemoteIP}, nil
	case keySourceNamespace:
		return condKey{kind: attrNamespace}, nil
	case keySourcePrincipal:
		return condKey{kind: attrPrincipal}, nil
	case keySourceSA:
		return condKey{kind: attrServiceAccount}, nil
	case keySourceTD:
		// Istio's from.source.trustDomains "is the same as the
		// source.trustDomain attribute".
		return condKey{kind: attrTrustDomain}, nil
	case keyRequestPrincipal:
		return condKey{kind: attrRequestPrincipal}, nil
	case keyRequestAudiences:
		return condKey{kind: attrAudiences}, nil
	case keyRequestPresenter:
		return condKey{kind: attrPresenter}, nil
	case keyDestIP:
		return condKey{kind: attrDestIP}, nil
	case keyDestPort:
		return condKey{kind: attrPort}, nil
	case keyConnSNI:
		return condKey{kind: attrSNI}, nil
	case "destination.namespace":
		return condKey{}, fmt.Errorf("attribute %s is replaced by metadata.namespace", key)
	case "destination.name", "destination.user":
		return condKey{}, fmt.Errorf("attribute %s was only supported by Istio's v1alpha1 RBAC; it is not supported", key)
	case "":
		return condKey{}, fmt.Errorf("key must not be empty")
	}
	switch {
	case strings.HasPrefix(key, keyRequestHeaders):
		names, err := bracketNames(key[len(keyRequestHeaders):], 1)
		if err != nil {
			return condKey{}, fmt.Errorf("bad key %q: %v; write request.headers[Header-Name]", key, err)
		}
		h, err := headerKey(names[0])
		if err != nil {
			return condKey{}, fmt.Errorf("bad key %q: %v", key, err)
		}
		return condKey{kind: attrHeader, header: h}, nil
	case strings.HasPrefix(key, keyRequestClaims):
		names, err := bracketNames(key[len(keyRequestClaims):], maxClaimDepth)
		if err != nil {
			return condKey{}, fmt.Errorf("bad key %q: %v; write request.auth.claims[name] or request.auth.claims[outer][inner]", key, err)
		}
		return condKey{kind: attrClaim, claim: names}, nil
	case strings.HasPrefix(key, "destination.labels"):
		return condKey{}, fmt.Errorf("attribute %s is replaced by the workload selector", key)
	case strings.HasPrefix(key, keyEnvoyFilters):
		return condKey{}, fmt.Errorf("attribute %s reads Envoy filter metadata, which Moatless does not have; it is not supported", key)
	}
	return condKey{}, fmt.Errorf("unknown attribute %q; see docs/policy.md for the supported keys", key)
}

// bracketNames splits "[a][b]" into [a b]: at least one and at most max
// names, none empty and none holding a bracket.
func bracketNames(s string, max int) ([]string, error) {
	if s == "" {
		return nil, fmt.Errorf("missing [name]")
	}
	var names []string
	for s != "" {
		if s[0] != '[' {
			return nil, fmt.Errorf("expected \"[\" at %q", s)
		}
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return nil, fmt.Errorf("missing \"]\"")
		}
		name := s[1:end]
		if name == "" {
			return nil, fmt.Errorf("empty name in []")
		}
		if strings.IndexByte(name, '[') >= 0 {
			return nil, fmt.Errorf("unbalanced brackets")
		}
		names = append(names, name)
		if len(names) > max {
			if max == 1 {
				return nil, fmt.Errorf("only one [name] is allowed")
			}
			return nil, fmt.Errorf("more than %d nested names", max)
		}
		s = s[end+1:]
	}
	return names, nil
}

// pseudoHeaders are the HTTP/2 pseudo-headers a condition may name, and
// the request field each one reads.
var pseudoHeaders = map[string]bool{":authority": true, ":method": true, ":path": true}

// headerKey validates a header name and returns it in the form lookups
// use: canonical (net/http's form) for ordinary headers, lower-case for
// pseudo-headers. "Host" reads the request's host, as ":authority" does.
func headerKey(name string) (string, error) {
	if strings.HasPrefix(name, ":") {
		l := strings.ToLower(name)
		if !pseudoHeaders[l] {
			return "", fmt.Errorf("unknown pseudo-header %q: use :authority, :method or :path", name)
		}
		return l, nil
	}
	for i := 0; i < len(name); i++ {
		if !isTokenChar(name[i]) {
			return "", fmt.Errorf("%q is not a valid header name", name)
		}
	}
	if strings.EqualFold(name, "host") {
		return ":authority", nil
	}
	return textproto.CanonicalMIMEHeaderKey(name), nil
}

// isTokenChar is RFC 9110's tchar.
func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
