package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The secrets service in the demo: orders reads its configuration from KV
// and encrypts a card number with transit, both through its sidecar's
// outbound listener to the server, so its SVID is its only credential;
// frontend, which no secrets policy names, is refused. With --postgres,
// orders also gets a leased PostgreSQL user.

const demoCard = "4111 1111 1111 1111"

// setUpSecrets writes the KV secret, the transit key and the access
// policy, and the database connection and role when a PostgreSQL is given.
func (d *demo) setUpSecrets(ctx context.Context) error {
	calls := []struct {
		method, path string
		body         any
	}{
		{"POST", "/v1/secret/data/orders/config", map[string]any{"data": map[string]any{"db_host": "db.prod.internal", "api_key": randomString(18)}}},
		{"POST", "/v1/transit/keys/cards", nil},
		{"POST", "/v1/sys/policies/apply", map[string]any{"files": []map[string]string{{"name": "orders-secrets.yaml", "content": fmt.Sprintf(`name: orders
subjects:
  spiffe_ids: [%s]
paths:
  - {path: "secret/data/orders/*", capabilities: [read]}
  - {path: "transit/encrypt/cards", capabilities: [update]}
  - {path: "database/creds/orders", capabilities: [read]}
`, demoID("orders"))}}}},
	}
	if d.postgres != "" {
		u, err := url.Parse(d.postgres)
		if err != nil || u.User == nil {
			return fmt.Errorf("--postgres: want postgres://USER:PASSWORD@HOST:PORT/DB, got an unparsable URL")
		}
		pw, _ := u.User.Password()
		user := u.User.Username()
		u.User = nil
		tmpl := strings.Replace(u.String(), "://", "://{{username}}:{{password}}@", 1)
		calls = append(calls,
			struct {
				method, path string
				body         any
			}{"POST", "/v1/database/config/demo", map[string]any{"plugin_name": "postgresql-database-plugin", "connection_url": tmpl,
				"username": user, "password": pw, "allowed_roles": "orders"}},
			struct {
				method, path string
				body         any
			}{"POST", "/v1/database/roles/orders", map[string]any{"db_name": "demo", "default_ttl": "1h", "max_ttl": "24h",
				"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`}})
	}
	for _, c := range calls {
		if err := d.admin.do(ctx, c.method, c.path, c.body, nil); err != nil {
			return fmt.Errorf("secrets set-up %s: %w", c.path, err)
		}
	}
	d.logf("wrote secret/orders/config, created transit key cards, applied secrets policy orders (for %s)", demoID("orders"))
	if d.postgres == "" {
		d.logf("no --postgres: the database credentials row is skipped (rerun with --postgres postgres://ADMIN:PASSWORD@HOST/DB to see orders get a leased PostgreSQL user)")
	}
	return nil
}

// secretsCall sends a secrets API request through a sidecar's outbound
// listener to the server (the sidecar originates mTLS with its SVID) and
// returns the status and the envelope's data.
func (d *demo) secretsCall(ctx context.Context, from, method, path string, body any) (int, map[string]any) {
	var rd io.Reader = strings.NewReader("")
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	req, _ := http.NewRequestWithContext(ctx, method, "http://"+d.sidecars[from].outbound["server"]+path, rd)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var env struct {
		LeaseID       string         `json:"lease_id"`
		LeaseDuration int64          `json:"lease_duration"`
		Data          map[string]any `json:"data"`
	}
	json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&env)
	if env.Data != nil && env.LeaseID != "" {
		env.Data["lease_id"], env.Data["lease_duration"] = env.LeaseID, env.LeaseDuration
	}
	return resp.StatusCode, env.Data
}

// secretsPolicies names the secrets policies that apply to a sidecar's
// identity, as the server reports them (lookup-self with the SVID).
func (d *demo) secretsPolicies(ctx context.Context, from string) string {
	st, data := d.secretsCall(ctx, from, "GET", "/v1/auth/token/lookup-self", nil)
	pols, _ := data["policies"].([]any)
	if st != http.StatusOK || len(pols) == 0 {
		return "no secrets policy (deny by default)"
	}
	var names []string
	for _, p := range pols {
		names = append(names, fmt.Sprint(p))
	}
	return "secrets policy " + strings.Join(names, ", ")
}

// secretsRows makes the secrets calls and returns their rows, numbered
// from step+1.
func (d *demo) secretsRows(ctx context.Context, step int) []demoRow {
	var rows []demoRow
	row := func(caller, method, path, expected string, status int, note string) {
		step++
		rows = append(rows, demoRow{Step: step, Caller: caller, Callee: "server", Method: method, Path: path, Note: note,
			Expected: expected, Result: outcome(status), Policy: d.secretsPolicies(ctx, caller)})
	}
	st, data := d.secretsCall(ctx, "orders", "GET", "/v1/secret/data/orders/config", nil)
	kv, _ := data["data"].(map[string]any)
	row("orders", "GET", "/v1/secret/data/orders/config", "allow", st,
		fmt.Sprintf("KV read with orders' SVID as its only credential (no token): db_host=%v", kv["db_host"]))

	st, data = d.secretsCall(ctx, "orders", "POST", "/v1/transit/encrypt/cards", map[string]any{"plaintext": base64.StdEncoding.EncodeToString([]byte(demoCard))})
	ct, _ := data["ciphertext"].(string)
	if len(ct) > 24 {
		ct = ct[:24] + "…"
	}
	row("orders", "POST", "/v1/transit/encrypt/cards", "allow", st, fmt.Sprintf("card %s stored as %s (the key never leaves the server)", demoCard, ct))

	st, _ = d.secretsCall(ctx, "frontend", "GET", "/v1/secret/data/orders/config", nil)
	row("frontend", "GET", "/v1/secret/data/orders/config", "deny", st, "no secrets policy names frontend: denied by default")

	if d.postgres != "" {
		st, data = d.secretsCall(ctx, "orders", "GET", "/v1/database/creds/orders", nil)
		row("orders", "GET", "/v1/database/creds/orders", "allow", st,
			fmt.Sprintf("PostgreSQL user %v created for %vs (lease %v); dropped when the lease ends", data["username"], data["lease_duration"], data["lease_id"]))
	}
	return rows
}
