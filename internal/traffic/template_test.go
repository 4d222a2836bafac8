package traffic

import (
	"strings"
	"testing"
)

func TestPathTemplate(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"empty", "", "/"},
		{"root", "/", "/"},
		{"names_unchanged", "/api/v1/orders", "/api/v1/orders"},
		{"numeric_id", "/orders/42", "/orders/{*}"},
		{"two_ids", "/users/7/orders/1234", "/users/{*}/orders/{*}"},
		{"uuid", "/carts/3f2b8c1e-9d4a-4c7e-8f00-0a1b2c3d4e5f/items", "/carts/{*}/items"},
		{"hex_digest", "/blobs/9f86d081884c7d659a2feaa0c55ad015", "/blobs/{*}"},
		{"object_id", "/docs/507f1f77bcf86cd799439011", "/docs/{*}"},
		{"ulid", "/events/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/events/{*}"},
		{"prefixed_id", "/invoices/inv_00423171", "/invoices/{*}"},
		{"date", "/reports/2024-06-01", "/reports/{*}"},
		{"email_segment", "/users/alice@example.com/profile", "/users/{*}/profile"},
		{"escaped_email", "/users/alice%40example.com", "/users/{*}"},
		{"short_words_kept", "/sha256/html5/v2", "/sha256/html5/v2"},
		{"trailing_slash", "/orders/42/", "/orders/{*}/"},
		{"no_leading_slash", "orders/42", "/orders/{*}"},
		{"literal_operator_escaped", "/admin/{*}/x", "/admin/%7B%2A%7D/x"},
		{"literal_star_escaped", "/files/*", "/files/%2A"},
		{"deep_path_cut", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/{**}"},
		{"long_path_cut", "/" + strings.Repeat("abcdefghij", 20) + "/" + strings.Repeat("klmnopqrst", 20), "/" + strings.Repeat("abcdefghij", 20) + "/{**}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := PathTemplate(tc.in)
			if got != tc.want {
				t.Fatalf("PathTemplate(%q) = %q, want %q", tc.in, got, tc.want)
			}
			if len(got) > MaxTemplateLen {
				t.Fatalf("template of %d bytes", len(got))
			}
		})
	}
}

func TestPathTemplateNoAllocWhenUnchanged(t *testing.T) {
	n := testing.AllocsPerRun(100, func() { PathTemplate("/api/v1/orders/list") })
	if n != 0 {
		t.Fatalf("%v allocations for a path that needs no template", n)
	}
}

func FuzzPathTemplate(f *testing.F) {
	for _, s := range []string{"/", "/orders/42", "/a//b", "/{**}/x", "/%7B*%7D", "x@y", strings.Repeat("/1", 40)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got := PathTemplate(p)
		if got == "" || got[0] != '/' {
			t.Fatalf("template %q of %q does not start with /", got, p)
		}
		if len(got) > MaxTemplateLen {
			t.Fatalf("template of %d bytes", len(got))
		}
		if strings.Count(got, "/") > MaxTemplateSegments+1 {
			t.Fatalf("template %q has too many segments", got)
		}
		if strings.Contains(got, "@") {
			t.Fatalf("template %q keeps an e-mail address", got)
		}
		// The only operators are the ones PathTemplate wrote.
		stripped := strings.ReplaceAll(strings.ReplaceAll(got, "{**}", ""), "{*}", "")
		if strings.ContainsAny(stripped, "{}*") {
			t.Fatalf("template %q has a literal operator character", got)
		}
	})
}
