package fieldcrypt

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Transit is a BatchCipher backed by the transit API of a Moatless
// server (or HashiCorp Vault): POST /v1/transit/encrypt/KEY and
// /v1/transit/decrypt/KEY with batch_input, so a document costs one
// round trip each way. Authenticate with Token (X-Vault-Token) or with a
// client certificate in Client's TLS configuration (the workload's
// X509-SVID: no token needed).
type Transit struct {
	// Addr is the server's base URL, e.g. https://moatless:8443.
	Addr string
	// Key is the transit key's name.
	Key string
	// Token is sent as X-Vault-Token when not empty.
	Token string
	// Mount is the transit mount; "transit" when empty.
	Mount string
	// Client sends the requests; http.DefaultClient when nil.
	Client *http.Client
}

func (t *Transit) call(ctx context.Context, op string, body any, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	mount := t.Mount
	if mount == "" {
		mount = "transit"
	}
	u := strings.TrimRight(t.Addr, "/") + "/v1/" + mount + "/" + op + "/" + url.PathEscape(t.Key)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if t.Token != "" {
		req.Header.Set("X-Vault-Token", t.Token)
	}
	c := t.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("fieldcrypt: transit %s: %w", op, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("fieldcrypt: transit %s: %w", op, err)
	}
	var env struct {
		Data   json.RawMessage `json:"data"`
		Errors []string        `json:"errors"`
	}
	json.Unmarshal(raw, &env)
	if resp.StatusCode/100 != 2 {
		// A batch with failed items carries the per-item errors in data.
		var br struct {
			BatchResults []struct {
				Error string `json:"error"`
			} `json:"batch_results"`
		}
		if json.Unmarshal(env.Data, &br) == nil {
			for _, r := range br.BatchResults {
				if r.Error != "" {
					return fmt.Errorf("fieldcrypt: transit %s: %s", op, r.Error)
				}
			}
		}
		if len(env.Errors) > 0 {
			return fmt.Errorf("fieldcrypt: transit %s: %s (HTTP %d)", op, strings.Join(env.Errors, "; "), resp.StatusCode)
		}
		return fmt.Errorf("fieldcrypt: transit %s: HTTP %d", op, resp.StatusCode)
	}
	return json.Unmarshal(env.Data, out)
}

type batchItem struct {
	Plaintext  string `json:"plaintext,omitempty"`
	Ciphertext string `json:"ciphertext,omitempty"`
	Context    string `json:"context,omitempty"`
}

type batchResult struct {
	Ciphertext string `json:"ciphertext"`
	Plaintext  string `json:"plaintext"`
	Error      string `json:"error"`
}

func ctxB64(c []byte) string {
	if c == nil {
		return ""
	}
	return base64.StdEncoding.EncodeToString(c)
}

// EncryptBatch encrypts values in one request.
func (t *Transit) EncryptBatch(ctx context.Context, pts, ctxs [][]byte) ([]string, error) {
	items := make([]batchItem, len(pts))
	for i := range pts {
		items[i] = batchItem{Plaintext: base64.StdEncoding.EncodeToString(pts[i]), Context: ctxB64(ctxs[i])}
	}
	var out struct {
		BatchResults []batchResult `json:"batch_results"`
	}
	if err := t.call(ctx, "encrypt", map[string]any{"batch_input": items}, &out); err != nil {
		return nil, err
	}
	res := make([]string, len(out.BatchResults))
	for i, r := range out.BatchResults {
		if r.Error != "" || r.Ciphertext == "" {
			return nil, fmt.Errorf("fieldcrypt: transit encrypt: %s", r.Error)
		}
		res[i] = r.Ciphertext
	}
	return res, nil
}

// DecryptBatch decrypts values in one request.
func (t *Transit) DecryptBatch(ctx context.Context, cts []string, ctxs [][]byte) ([][]byte, error) {
	items := make([]batchItem, len(cts))
	for i := range cts {
		items[i] = batchItem{Ciphertext: cts[i], Context: ctxB64(ctxs[i])}
	}
	var out struct {
		BatchResults []batchResult `json:"batch_results"`
	}
	if err := t.call(ctx, "decrypt", map[string]any{"batch_input": items}, &out); err != nil {
		return nil, err
	}
	res := make([][]byte, len(out.BatchResults))
	for i, r := range out.BatchResults {
		if r.Error != "" {
			return nil, fmt.Errorf("fieldcrypt: transit decrypt: %s", r.Error)
		}
		b, err := base64.StdEncoding.DecodeString(r.Plaintext)
		if err != nil {
			return nil, errors.New("fieldcrypt: transit decrypt: plaintext is not base64")
		}
		res[i] = b
	}
	return res, nil
}

// Encrypt encrypts one value.
func (t *Transit) Encrypt(ctx context.Context, pt, c []byte) (string, error) {
	r, err := t.EncryptBatch(ctx, [][]byte{pt}, [][]byte{c})
	if err != nil {
		return "", err
	}
	return r[0], nil
}

// Decrypt decrypts one value.
func (t *Transit) Decrypt(ctx context.Context, ct string, c []byte) ([]byte, error) {
	r, err := t.DecryptBatch(ctx, []string{ct}, [][]byte{c})
	if err != nil {
		return nil, err
	}
	return r[0], nil
}
