package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestSecretsWithHvac: an application written against Vault with Python's
// hvac client (Debian's python3-hvac) logs in with AppRole, writes and
// reads KV v2 versions and uses transit against "moatless server",
// unchanged; a path its policy does not grant is Forbidden.
func TestSecretsWithHvac(t *testing.T) {
	const python = "/usr/bin/python3"
	if err := exec.Command(python, "-c", "import hvac").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python3-hvac is required under CI=true: %v", err)
		}
		t.Skip("skipping: install the Debian package python3-hvac")
	}
	p := startPlane(t)
	hcl := filepath.Join(t.TempDir(), "orders.hcl")
	os.WriteFile(hcl, []byte(`
path "secret/data/orders/*" { capabilities = ["create", "read", "update"] }
path "transit/encrypt/cards" { capabilities = ["update"] }
path "transit/decrypt/cards" { capabilities = ["update"] }
`), 0o600)
	p.admin("secrets", "policy", "apply", "-f", hcl, "--name", "orders")
	p.admin("secrets", "transit", "create", "cards")
	p.admin("secrets", "write", "auth/approle/role/orders", "token_policies=orders", "secret_id_num_uses=1")
	var rid, sid struct {
		Data map[string]any `json:"data"`
	}
	json.Unmarshal([]byte(p.admin("secrets", "read", "auth/approle/role/orders/role-id", "-o", "json")), &rid)
	json.Unmarshal([]byte(p.admin("secrets", "write", "auth/approle/role/orders/secret-id", "-o", "json")), &sid)

	cmd := exec.Command(python, "testdata/hvac_client.py", "https://"+p.addr, filepath.Join(p.dataDir, "bundle.pem"),
		rid.Data["role_id"].(string), sid.Data["secret_id"].(string))
	cmd.Env = append(os.Environ(), "VAULT_ADDR=", "VAULT_TOKEN=", "HOME="+t.TempDir())
	outb, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hvac client: %v\n%s", err, outb)
	}
	lines := strings.Split(strings.TrimSpace(string(outb)), "\n")
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &got); err != nil {
		t.Fatalf("hvac client output: %v\n%s", err, outb)
	}
	want := map[string]any{
		"policies": []any{"orders"}, "authenticated": true,
		"kv_password": "from-hvac-2", "kv_version": 2.0, "kv_v1_password": "from-hvac",
		"ciphertext_prefix": "vault:v1:", "decrypted": "4111 1111 1111 1111",
		"denied": "forbidden", "lookup_self_policies": []any{"orders"},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("what hvac saw (-want +got):\n%s", d)
	}
}
