package gateway

import (
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/wire"
)

// TestGatewayDecisionNamesItsVerifiedToken: the gateway's decision
// records name the issuer and subject of the token that authenticated
// the request (never the token): in the decision log of an allow, in the
// audit event of a denial, and in that of the refusal of a token issued
// to an identity revoked since (its signature verified). A token whose
// signature did not verify names no one. Fails on the parent (no record
// named a token).
func TestGatewayDecisionNamesItsVerifiedToken(t *testing.T) {
	const owner = "spiffe://" + td + "/ns/prod/sa/reports"
	var (
		mu     sync.Mutex
		events []proxy.DecisionEvent
	)
	decisions := &syncBuffer{}
	tg, sign := startHS256Gateway(t, func(o *Options) {
		o.Audit = auditFunc(func(ev proxy.DecisionEvent) { mu.Lock(); events = append(events, ev); mu.Unlock() })
		o.DecisionLog = slog.New(slog.NewJSONHandler(decisions, nil))
		o.Config.DecisionLog.AllowSampleRate = 1
	})
	tok := sign(map[string]any{"sub": "alice", "azp": owner, "jti": "jti-named"})
	lastEvent := func() proxy.DecisionEvent {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		if len(events) == 0 {
			t.Fatal("no audit event")
		}
		ev := events[len(events)-1]
		events = nil
		return ev
	}
	type logged struct {
		Decision     string `json:"decision"`
		TokenIssuer  string `json:"token_issuer"`
		TokenSubject string `json:"token_subject"`
	}

	resp, _ := tg.do(t, "GET", "/orders/1", nil, map[string]string{"Authorization": "Bearer " + tok})
	if resp.StatusCode != 200 {
		t.Fatalf("allowed token: %d", resp.StatusCode)
	}
	var rec logged
	line, _, _ := strings.Cut(decisions.String(), "\n")
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec != (logged{"allow", hs256Issuer, "alice"}) {
		t.Fatalf("allow's decision log (%v): %s", err, line)
	}

	tests := []struct {
		name     string
		method   string
		token    string
		revoke   bool
		status   int
		decision string
		iss, sub string
	}{
		{"denied_names_its_token", "DELETE", tok, false, 403, "deny", hs256Issuer, "alice"},
		{"forged_names_no_one", "GET", tok[:len(tok)-4] + "AAAA", false, 401, "unauthenticated", "", ""},
		{"revoked_identity_names_its_token", "GET", tok, true, 401, "unauthenticated", hs256Issuer, "alice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.revoke {
				tg.g.SetRevocations(&wire.Revocations{SPIFFEIDs: []string{owner}})
			}
			resp, _ := tg.do(t, tc.method, "/orders/1", nil, map[string]string{"Authorization": "Bearer " + tc.token})
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			ev := lastEvent()
			if ev.Decision != tc.decision || ev.TokenIssuer != tc.iss || ev.TokenSubject != tc.sub {
				t.Fatalf("audit event %+v, want %s naming %q %q", ev, tc.decision, tc.iss, tc.sub)
			}
		})
	}
	t.Run("long_subject_clipped", func(t *testing.T) {
		long := sign(map[string]any{"sub": strings.Repeat("s", 4096)})
		resp, _ := tg.do(t, "DELETE", "/orders/1", nil, map[string]string{"Authorization": "Bearer " + long})
		if resp.StatusCode != 403 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if ev := lastEvent(); len(ev.TokenSubject) > proxy.MaxTokenName || !strings.HasPrefix(ev.TokenSubject, "sss") {
			t.Fatalf("a %d-byte token subject in the event", len(ev.TokenSubject))
		}
	})
	if out := decisions.String(); strings.Contains(out, tok[strings.LastIndexByte(tok, '.')+1:]) {
		t.Fatal("the decision log holds the token")
	}
}
