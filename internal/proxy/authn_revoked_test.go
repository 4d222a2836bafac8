package proxy

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// sinkEvents is an AuditSink that hands every event to a channel.
type sinkEvents chan DecisionEvent

func (c sinkEvents) Record(_ context.Context, ev DecisionEvent) {
	select {
	case c <- ev:
	default:
	}
}

// TestRevokedTokenNamesItsOwner: frontend relays a token issued to the
// reports workload (its stolen JWT, say) and revoked since. orders'
// sidecar refuses it (401) and its decision event, the one reported to
// the server, names the token's verified issuer and subject, so that
// detection can name the workload whose credential is out instead of
// frontend, which only relayed it. Whether the token was verified on
// this request or remembered verified from an earlier one. A token
// refused for anything else (its signature) names no one: its claims
// are not the issuer's word. On every client path. Fails on the parent
// (the event has no token subject).
func TestRevokedTokenNamesItsOwner(t *testing.T) {
	for _, v := range clientPaths {
		t.Run(v.name, func(t *testing.T) {
			const reportsID = "spiffe://example.org/ns/prod/sa/reports"
			jwks, token := newTestIssuer(t)
			events := make(sinkEvents, 16)
			ca := testpki.NewCA(t, "example.org")
			s, inL := startEngineSidecar(t, ca, userPolicies(t, jwks), userApp(t), false, v.server.edit, func(c *Config) { c.Audit = events })
			c := v.client(t, ca, frontendID, ordersID)
			now := time.Now().Unix()
			send := func(tok string) int {
				t.Helper()
				req, _ := http.NewRequest("GET", "https://"+inL.Addr().String()+"/", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			next := func() DecisionEvent {
				t.Helper()
				select {
				case ev := <-events:
					return ev
				case <-time.After(10 * time.Second):
					t.Fatal("no decision event")
				}
				return DecisionEvent{}
			}
			cached := token(map[string]any{"iss": "https://issuer.example", "sub": reportsID, "exp": now + 300, "jti": "j-cached"})
			fresh := token(map[string]any{"iss": "https://issuer.example", "sub": reportsID, "exp": now + 300, "jti": "j-fresh"})
			if code := send(cached); code != 200 {
				t.Fatalf("before the revocation: %d", code)
			}
			s.SetRevocations(&wire.Revocations{TokenIDs: []wire.RevokedTokenID{{JTI: "j-cached", ExpiresAt: time.Now().Add(time.Hour)}, {JTI: "j-fresh", ExpiresAt: time.Now().Add(time.Hour)}}})
			for _, tok := range []string{cached, fresh} {
				if code := send(tok); code != 401 {
					t.Fatalf("revoked token: %d", code)
				}
				ev := next()
				if ev.Decision != "unauthenticated" || ev.Source != frontendID || ev.TokenIssuer != "https://issuer.example" || ev.TokenSubject != reportsID {
					t.Fatalf("decision event of a revoked token: %+v", ev)
				}
				if we := wireEvent(&ev); we.TokenSubject != reportsID || we.TokenIssuer != ev.TokenIssuer {
					t.Fatalf("reported event: %+v", we)
				}
			}
			if code := send(fresh[:len(fresh)-4] + "AAAA"); code != 401 {
				t.Fatalf("tampered token: %d", code)
			}
			if ev := next(); ev.TokenSubject != "" || ev.TokenIssuer != "" {
				t.Fatalf("a token whose signature failed names %q of %q", ev.TokenSubject, ev.TokenIssuer)
			}
		})
	}
}

// TestDecisionNamesItsVerifiedToken: a sidecar's decision on a request
// authenticated by a token names that token's issuer and subject (never
// the token), in the decision log of an allow as in the audit event of a
// refusal, and so does the refusal of a token issued to an identity
// revoked since, although its signature verified and the policy allowed
// it. On every client path. Fails on the parent (the allow named no
// token, and the revoked identity's refusal dropped the token Evaluate
// had named).
func TestDecisionNamesItsVerifiedToken(t *testing.T) {
	for _, v := range clientPaths {
		t.Run(v.name, func(t *testing.T) {
			const reportsID = "spiffe://example.org/ns/prod/sa/reports"
			jwks, token := newTestIssuer(t)
			events := make(sinkEvents, 16)
			logs := &syncBuf{}
			ca := testpki.NewCA(t, "example.org")
			s, inL := startEngineSidecar(t, ca, userPolicies(t, jwks), userApp(t), false, v.server.edit, func(c *Config) {
				c.Audit = events
				c.DecisionLog = slog.New(slog.NewJSONHandler(logs, nil))
				c.AllowSampleRate = 1
			})
			c := v.client(t, ca, frontendID, ordersID)
			tok := token(map[string]any{"iss": "https://issuer.example", "sub": reportsID, "exp": time.Now().Unix() + 300, "jti": "j-named"})
			send := func() int {
				t.Helper()
				req, _ := http.NewRequest("GET", "https://"+inL.Addr().String()+"/", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			if code := send(); code != 200 {
				t.Fatalf("allowed token: %d", code)
			}
			var rec struct {
				Decision     string `json:"decision"`
				TokenIssuer  string `json:"token_issuer"`
				TokenSubject string `json:"token_subject"`
			}
			line, _, _ := strings.Cut(logs.String(), "\n")
			if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Decision != "allow" || rec.TokenIssuer != "https://issuer.example" || rec.TokenSubject != reportsID {
				t.Fatalf("allow's decision log (%v): %s", err, line)
			}
			if strings.Contains(logs.String(), tok) {
				t.Fatal("the decision log holds the token")
			}
			s.SetRevocations(&wire.Revocations{SPIFFEIDs: []string{reportsID}})
			if code := send(); code != 401 {
				t.Fatalf("token of a revoked identity: %d", code)
			}
			select {
			case ev := <-events:
				if ev.Decision != "unauthenticated" || ev.TokenIssuer != "https://issuer.example" || ev.TokenSubject != reportsID {
					t.Fatalf("decision event of a revoked identity's token: %+v", ev)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no decision event")
			}
		})
	}
}
