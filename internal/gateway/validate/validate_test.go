package validate

import (
	"context"
	"net/http"
	"strings"
	"testing"
)

const orderSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["item", "qty"],
  "additionalProperties": false,
  "properties": {
    "item": {"type": "string", "maxLength": 64},
    "qty": {"type": "integer", "minimum": 1, "maximum": 100},
    "lines": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]+$"}}}}
  }
}`

const ordersAPI = `
openapi: 3.0.3
info: {title: orders, version: "1"}
paths:
  /orders/{id}:
    get:
      parameters:
        - {name: id, in: path, required: true, schema: {type: integer, minimum: 1}}
        - {name: expand, in: query, schema: {type: string, enum: [items, customer]}}
      responses: {"200": {description: ok}}
  /orders:
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [item, qty]
              properties:
                item: {type: string}
                qty: {type: integer, minimum: 1}
      responses: {"201": {description: created}}
`

func req(method, target, ctype string) *http.Request {
	r, _ := http.NewRequest(method, "https://api.example.com"+target, nil)
	if ctype != "" {
		r.Header.Set("Content-Type", ctype)
	}
	return r
}

func TestJSONSchema(t *testing.T) {
	v, err := NewJSONSchema("order.json", []byte(orderSchema))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, ctype, body, pointer string
		ok                         bool
	}{
		{"valid", "application/json", `{"item":"book","qty":2}`, "", true},
		{"no_body", "", ``, "", true},
		{"missing_field", "application/json", `{"item":"book"}`, "", false},
		{"wrong_type", "application/json", `{"item":"book","qty":"2"}`, "/qty", false},
		{"nested", "application/json", `{"item":"book","qty":1,"lines":[{"sku":"AB-1"},{"sku":"x"}]}`, "/lines/1/sku", false},
		{"extra_field", "application/json", `{"item":"book","qty":1,"admin":true}`, "", false},
		{"not_json", "application/json", `{"item":`, "", false},
		{"form_body", "application/x-www-form-urlencoded", `item=book`, "", false},
		// Bodies the schema and the app could read differently: refused.
		{"duplicate_name_last_valid", "application/json", `{"item":"book","qty":0,"qty":2}`, "/qty", false},
		{"duplicate_name_escaped", "application/json", `{"item":"book","q\u0074y":0,"qty":2}`, "/qty", false},
		{"duplicate_name_nested", "application/json", `{"item":"book","qty":1,"lines":[{"sku":"AB-1"},{"sku":"x","sku":"AB-2"}]}`, "/lines/1/sku", false},
		{"same_name_other_objects", "application/json", `{"item":"book","qty":1,"lines":[{"sku":"AB-1"},{"sku":"AB-2"}]}`, "", true},
		{"charset_utf16", "application/json; charset=utf-16", `{"item":"book","qty":2}`, "", false},
		{"charset_utf8", "application/json; charset=UTF-8", `{"item":"book","qty":2}`, "", true},
		// A JSON body under another type, or none, is not waved through
		// unvalidated to an app that parses it as JSON anyway.
		{"json_labeled_text_plain", "text/plain", `{"item":"book","qty":0}`, "", false},
		{"json_labeled_xml", "application/xml", `{"item":"book","qty":0}`, "", false},
		{"json_without_type", "", `{"item":"book","qty":0}`, "", false},
		{"json_type_upper_case", "APPLICATION/JSON", `{"item":"book","qty":0}`, "/qty", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			viol := v.Validate(context.Background(), req("POST", "/orders", tt.ctype), []byte(tt.body))
			if (viol == nil) != tt.ok {
				t.Fatalf("violation %+v, want ok=%v", viol, tt.ok)
			}
			if viol != nil && tt.pointer != "" && viol.Pointer != tt.pointer {
				t.Errorf("pointer %q, want %q", viol.Pointer, tt.pointer)
			}
		})
	}
	if _, err := NewJSONSchema("x.json", []byte(`{"$ref": "https://evil.example/s.json"}`)); err == nil {
		t.Error("external $ref compiled")
	}
}

func TestOpenAPI(t *testing.T) {
	v, err := NewOpenAPI("orders.yaml", []byte(ordersAPI))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, method, target, ctype, body, pointer string
		ok                                         bool
	}{
		{"get_ok", "GET", "/orders/42?expand=items", "", "", "", true},
		{"bad_path_param", "GET", "/orders/abc", "", "", "", false},
		{"bad_enum", "GET", "/orders/1?expand=secrets", "", "", "", false},
		{"unknown_operation", "DELETE", "/orders/1", "", "", "", false},
		{"post_ok", "POST", "/orders", "application/json", `{"item":"book","qty":1}`, "", true},
		{"post_bad_qty", "POST", "/orders", "application/json", `{"item":"book","qty":0}`, "/qty", false},
		{"post_no_body", "POST", "/orders", "application/json", ``, "", false},
		{"post_duplicate_name", "POST", "/orders", "application/json", `{"item":"book","qty":0,"qty":1}`, "/qty", false},
		// An operation without a requestBody takes none: a body would reach
		// the app unchecked.
		{"get_with_body", "GET", "/orders/1", "application/json", `{"qty":0}`, "", false},
		{"get_with_untyped_body", "GET", "/orders/1", "", `{"qty":0}`, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := req(tt.method, tt.target, tt.ctype)
			viol := v.Validate(context.Background(), r, []byte(tt.body))
			if (viol == nil) != tt.ok {
				t.Fatalf("violation %+v, want ok=%v", viol, tt.ok)
			}
			if viol != nil && tt.pointer != "" && viol.Pointer != tt.pointer {
				t.Errorf("pointer %q, want %q (%s)", viol.Pointer, tt.pointer, viol.Message)
			}
			if viol != nil && strings.Contains(viol.Message, "book") {
				t.Errorf("message echoes input: %s", viol.Message)
			}
		})
	}
}

// FuzzJSONSchema: any body is validated without panic.
func FuzzJSONSchema(f *testing.F) {
	v, err := NewJSONSchema("order.json", []byte(orderSchema))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{`{"item":"a","qty":1}`, `[]`, `{"lines":[{"sku":1}]}`, `"\ud800"`, `1e400`, `{"a":{"b":[1,{"c":2,"c":3}]}}`, `[[],{},[{}]]`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		v.Validate(context.Background(), req("POST", "/orders", "application/json"), []byte(body))
	})
}

func TestCheckUniqueNames(t *testing.T) {
	tests := []struct{ name, body, pointer string }{
		{"flat", `{"a":1,"b":2}`, ""},
		{"scalar_root", `"x"`, ""},
		{"empty_containers", `[[],{},[{}],{"a":{},"b":[]}]`, ""},
		{"root_duplicate", `{"a":1,"a":2}`, "/a"},
		{"escaped_duplicate", `{"\u0061":1,"a":2}`, "/a"},
		{"in_array", `[{"a":1},{"a":1,"a":2}]`, "/1/a"},
		{"after_nested_values", `{"a":{"x":[1,2,{"y":3}]},"b":[{}],"a":0}`, "/a"},
		{"deep", `{"a":{"b":[0,1,{"c~/":1,"c~/":2}]}}`, "/a/b/2/c~0~1"},
		{"same_name_sibling_objects", `{"a":{"n":1},"b":{"n":1}}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := checkUniqueNames([]byte(tt.body))
			switch {
			case tt.pointer == "" && v != nil:
				t.Fatalf("violation %+v for a document without duplicates", v)
			case tt.pointer != "" && (v == nil || v.Pointer != tt.pointer):
				t.Fatalf("violation %+v, want pointer %q", v, tt.pointer)
			}
		})
	}
}
