// Package opaclient is a client of Open Policy Agent's REST API written
// from OPA's documentation alone (https://www.openpolicyagent.org/docs/rest-api),
// with the standard library and nothing of Moatless: tests use it as "an
// existing OPA client" to show that code written for OPA works against
// Moatless unchanged. It is not used by the moatless binary.
package opaclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Client talks to one OPA (or OPA-compatible) server.
type Client struct {
	// Base is the server's URL, e.g. "http://127.0.0.1:8181".
	Base string
	// Token, when set, is sent as "Authorization: Bearer <token>", as OPA
	// servers started with --authentication=token require.
	Token string
	HTTP  *http.Client
}

// Error is a non-2xx answer: OPA's {"code", "message", "errors"}.
type Error struct {
	Status  int
	Code    string `json:"code"`
	Message string `json:"message"`
	Errors  []struct {
		Code     string `json:"code"`
		Message  string `json:"message"`
		Location *struct {
			File string `json:"file"`
			Row  int    `json:"row"`
			Col  int    `json:"col"`
		} `json:"location"`
	} `json:"errors"`
}

func (e *Error) Error() string { return fmt.Sprintf("opa: %d %s: %s", e.Status, e.Code, e.Message) }

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, contentType string, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.Base, "/")+path, body)
	if err != nil {
		return 0, err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusNotModified {
		e := &Error{Status: resp.StatusCode}
		json.Unmarshal(b, e)
		return resp.StatusCode, e
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("opa: decode %q: %w", b, err)
		}
	}
	return resp.StatusCode, nil
}

// Query evaluates the document at path ("microservices/authz/allow") with
// input (POST /v1/data/{path} {"input": …}); defined is false when the
// answer has no "result".
func (c *Client) Query(ctx context.Context, path string, input any) (result any, defined bool, err error) {
	body, err := json.Marshal(map[string]any{"input": input})
	if err != nil {
		return nil, false, err
	}
	return c.result(ctx, http.MethodPost, path, bytes.NewReader(body))
}

// result sends a Data API query and reads its "result".
func (c *Client) result(ctx context.Context, method, path string, body io.Reader) (result any, defined bool, err error) {
	var out map[string]json.RawMessage
	ct := ""
	if body != nil {
		ct = "application/json"
	}
	if _, err := c.do(ctx, method, "/v1/data/"+strings.TrimPrefix(path, "/"), body, ct, &out); err != nil {
		return nil, false, err
	}
	raw, ok := out["result"]
	if !ok {
		return nil, false, nil
	}
	err = json.Unmarshal(raw, &result)
	return result, true, err
}

// Get reads the document at path (GET /v1/data/{path}).
func (c *Client) Get(ctx context.Context, path string) (result any, defined bool, err error) {
	return c.result(ctx, http.MethodGet, path, nil)
}

// PutData creates or overwrites the document at path (PUT /v1/data/{path}).
func (c *Client) PutData(ctx context.Context, path string, value any) error {
	body, err := json.Marshal(value)
	if err != nil {
		return err
	}
	_, err = c.do(ctx, http.MethodPut, "/v1/data/"+strings.TrimPrefix(path, "/"), bytes.NewReader(body), "application/json", nil)
	return err
}

// DeleteData deletes the document at path (DELETE /v1/data/{path}).
func (c *Client) DeleteData(ctx context.Context, path string) error {
	_, err := c.do(ctx, http.MethodDelete, "/v1/data/"+strings.TrimPrefix(path, "/"), nil, "", nil)
	return err
}

// Policy is a module as the Policy API returns it.
type Policy struct {
	ID  string          `json:"id"`
	Raw string          `json:"raw"`
	AST json.RawMessage `json:"ast"`
}

// PutPolicy creates or updates a module (PUT /v1/policies/{id}, the
// module's text as the body).
func (c *Client) PutPolicy(ctx context.Context, id, module string) error {
	_, err := c.do(ctx, http.MethodPut, "/v1/policies/"+id, strings.NewReader(module), "text/plain", nil)
	return err
}

// GetPolicy reads a module (GET /v1/policies/{id}).
func (c *Client) GetPolicy(ctx context.Context, id string) (Policy, error) {
	var out struct {
		Result Policy `json:"result"`
	}
	_, err := c.do(ctx, http.MethodGet, "/v1/policies/"+id, nil, "", &out)
	return out.Result, err
}

// ListPolicies lists the modules (GET /v1/policies).
func (c *Client) ListPolicies(ctx context.Context) ([]Policy, error) {
	var out struct {
		Result []Policy `json:"result"`
	}
	_, err := c.do(ctx, http.MethodGet, "/v1/policies", nil, "", &out)
	return out.Result, err
}

// DeletePolicy deletes a module (DELETE /v1/policies/{id}).
func (c *Client) DeletePolicy(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodDelete, "/v1/policies/"+id, nil, "", nil)
	return err
}
