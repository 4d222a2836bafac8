package server_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// vaultClient is HashiCorp's official Go client pointed at the test
// server, trusting its bundle, presenting cert when given.
func (e *env) vaultClient(t *testing.T, token string, cert *tls.Certificate) *vault.Client {
	t.Helper()
	cfg := vault.DefaultConfig()
	cfg.Address = "https://" + e.addr
	cfg.MaxRetries = 0
	conf := &tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1"}
	if cert != nil {
		conf.Certificates = []tls.Certificate{*cert}
	}
	cfg.HttpClient = &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: 30 * time.Second}
	c, err := vault.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.ClearNamespace()
	c.SetToken(token)
	if token == "" {
		c.ClearToken()
	}
	return c
}

func respCode(err error) int {
	var re *vault.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

const ordersHCL = `
# orders may read and write its own secrets and use its transit key
path "secret/data/orders/*" { capabilities = ["create", "read", "update", "patch", "delete"] }
path "secret/metadata/orders/*" { capabilities = ["read", "list", "delete"] }
path "secret/delete/orders/*" { capabilities = ["update"] }
path "secret/undelete/orders/*" { capabilities = ["update"] }
path "secret/destroy/orders/*" { capabilities = ["update"] }
path "transit/encrypt/orders" { capabilities = ["update"] }
path "transit/decrypt/orders" { capabilities = ["update"] }
path "transit/rewrap/orders" { capabilities = ["update"] }
`

// TestVaultClientAppRoleKVTransit drives the secrets service with the
// official Vault client: policy and AppRole set-up as admin, AppRole login,
// KV v2 versions, transit encrypt/rotate/rewrap/decrypt, a denied path and
// a secret ID past its use limit.
func TestVaultClientAppRoleKVTransit(t *testing.T) {
	e := start(t, "")
	ctx := context.Background()
	admin := e.vaultClient(t, e.token, nil)

	if err := admin.Sys().PutPolicy("orders", ordersHCL); err != nil {
		t.Fatalf("put policy: %v", err)
	}
	if _, err := admin.Logical().Write("auth/approle/role/orders", map[string]any{
		"token_policies": "orders", "secret_id_num_uses": 2, "secret_id_ttl": "10m", "token_ttl": "20m"}); err != nil {
		t.Fatalf("create role: %v", err)
	}
	rid, err := admin.Logical().Read("auth/approle/role/orders/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := admin.Logical().Write("auth/approle/role/orders/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	creds := map[string]any{"role_id": rid.Data["role_id"], "secret_id": sid.Data["secret_id"]}

	app := e.vaultClient(t, "", nil)
	login, err := app.Logical().Write("auth/approle/login", creds)
	if err != nil {
		t.Fatalf("approle login: %v", err)
	}
	if login.Auth == nil || !strings.HasPrefix(login.Auth.ClientToken, "mls.") || login.Auth.LeaseDuration != 1200 {
		t.Fatalf("login auth = %+v", login.Auth)
	}
	app.SetToken(login.Auth.ClientToken)

	// KV v2: two versions, read each, list versions, delete and undelete.
	kv := app.KVv2("secret")
	if _, err := kv.Put(ctx, "orders/db", map[string]any{"user": "orders", "password": "s3cret-1"}); err != nil {
		t.Fatalf("kv put: %v", err)
	}
	v2, err := kv.Put(ctx, "orders/db", map[string]any{"user": "orders", "password": "s3cret-2"})
	if err != nil || v2.VersionMetadata.Version != 2 {
		t.Fatalf("kv put 2: %+v %v", v2, err)
	}
	got, err := kv.Get(ctx, "orders/db")
	if err != nil || got.Data["password"] != "s3cret-2" || got.VersionMetadata.Version != 2 {
		t.Fatalf("kv get: %+v %v", got, err)
	}
	old, err := kv.GetVersion(ctx, "orders/db", 1)
	if err != nil || old.Data["password"] != "s3cret-1" {
		t.Fatalf("kv get version 1: %+v %v", old, err)
	}
	vers, err := kv.GetVersionsAsList(ctx, "orders/db")
	if err != nil || len(vers) != 2 {
		t.Fatalf("versions: %+v %v", vers, err)
	}
	if _, err := kv.Patch(ctx, "orders/db", map[string]any{"password": "s3cret-3"}); err != nil {
		t.Fatalf("kv patch: %v", err)
	}
	if got, _ := kv.Get(ctx, "orders/db"); got.Data["user"] != "orders" || got.Data["password"] != "s3cret-3" {
		t.Fatalf("after patch: %+v", got.Data)
	}
	if err := kv.Delete(ctx, "orders/db"); err != nil {
		t.Fatalf("kv delete: %v", err)
	}
	// As with Vault, a deleted version reads as metadata without data.
	if got, err := kv.Get(ctx, "orders/db"); err != nil || got.Data != nil || got.VersionMetadata.DeletionTime.IsZero() {
		t.Fatalf("deleted version: %+v %v", got, err)
	}
	if err := kv.Undelete(ctx, "orders/db", []int{3}); err != nil {
		t.Fatalf("undelete: %v", err)
	}
	if got, err := kv.Get(ctx, "orders/db"); err != nil || got.Data["password"] != "s3cret-3" {
		t.Fatalf("after undelete: %+v %v", got, err)
	}
	if err := kv.Destroy(ctx, "orders/db", []int{1}); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	if got, err := kv.GetVersion(ctx, "orders/db", 1); err != nil || got.Data != nil || !got.VersionMetadata.Destroyed {
		t.Fatalf("destroyed version: %+v %v", got, err)
	}

	// A path the policy does not grant.
	if _, err := kv.Get(ctx, "payments/db"); respCode(err) != http.StatusForbidden {
		t.Fatalf("read of an ungranted path: %v", err)
	}
	if _, err := app.Logical().Write("transit/keys/stolen", nil); respCode(err) != http.StatusForbidden {
		t.Fatalf("create key without grant: %v", err)
	}

	// Transit: encrypt, rotate (admin), rewrap to v2, retire v1, decrypt.
	if _, err := admin.Logical().Write("transit/keys/orders", nil); err != nil {
		t.Fatalf("create key: %v", err)
	}
	pt := base64.StdEncoding.EncodeToString([]byte("4111 1111 1111 1111"))
	enc, err := app.Logical().Write("transit/encrypt/orders", map[string]any{"plaintext": pt})
	if err != nil {
		t.Fatalf("encrypt: %v", err)
	}
	ct1 := enc.Data["ciphertext"].(string)
	if !strings.HasPrefix(ct1, "vault:v1:") {
		t.Fatalf("ciphertext %q", ct1)
	}
	if _, err := admin.Logical().Write("transit/keys/orders/rotate", nil); err != nil {
		t.Fatalf("rotate: %v", err)
	}
	rw, err := app.Logical().Write("transit/rewrap/orders", map[string]any{"ciphertext": ct1})
	if err != nil {
		t.Fatalf("rewrap: %v", err)
	}
	ct2 := rw.Data["ciphertext"].(string)
	if !strings.HasPrefix(ct2, "vault:v2:") {
		t.Fatalf("rewrapped %q", ct2)
	}
	if _, err := admin.Logical().Write("transit/keys/orders/config", map[string]any{"min_decryption_version": 2}); err != nil {
		t.Fatalf("config: %v", err)
	}
	if _, err := app.Logical().Write("transit/decrypt/orders", map[string]any{"ciphertext": ct1}); respCode(err) != http.StatusBadRequest {
		t.Fatalf("decrypt below min_decryption_version: %v", err)
	}
	dec, err := app.Logical().Write("transit/decrypt/orders", map[string]any{"ciphertext": ct2})
	if err != nil || dec.Data["plaintext"] != pt {
		t.Fatalf("decrypt: %+v %v", dec, err)
	}
	tampered := ct2[:len("vault:v2:")+4] + strings.Map(func(r rune) rune {
		if r == 'A' {
			return 'B'
		}
		return 'A'
	}, ct2[len("vault:v2:")+4:len("vault:v2:")+5]) + ct2[len("vault:v2:")+5:]
	if _, err := app.Logical().Write("transit/decrypt/orders", map[string]any{"ciphertext": tampered}); respCode(err) != http.StatusBadRequest {
		t.Fatalf("tampered ciphertext: %v", err)
	}

	// Token self-service.
	self, err := app.Auth().Token().LookupSelf()
	if err != nil {
		t.Fatalf("lookup-self: %v", err)
	}
	if pols, _ := self.TokenPolicies(); len(pols) != 1 || pols[0] != "orders" {
		t.Fatalf("token policies %v", pols)
	}
	if _, err := app.Auth().Token().RenewSelf(600); err != nil {
		t.Fatalf("renew-self: %v", err)
	}

	// The secret ID allows two logins; the third is refused.
	if _, err := e.vaultClient(t, "", nil).Logical().Write("auth/approle/login", creds); err != nil {
		t.Fatalf("second login: %v", err)
	}
	if _, err := e.vaultClient(t, "", nil).Logical().Write("auth/approle/login", creds); respCode(err) != http.StatusBadRequest {
		t.Fatalf("login past the use limit: %v", err)
	}

	// Revoking the token ends it.
	if err := app.Auth().Token().RevokeSelf(""); err != nil {
		t.Fatalf("revoke-self: %v", err)
	}
	if _, err := kv.Get(ctx, "orders/db"); respCode(err) != http.StatusForbidden {
		t.Fatalf("revoked token still works: %v", err)
	}
}
