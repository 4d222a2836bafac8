package traffic

import (
	"strings"
	"testing"
)

func TestScanPII(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want PIICounts
	}{
		{"nothing", `{"orders":[{"id":42,"total":"12.50"}]}`, PIICounts{}},
		{"visa_plain", `"pan":"4111111111111111"`, PIICounts{Cards: 1}},
		{"visa_spaces", "card 4111 1111 1111 1111 ok", PIICounts{Cards: 1}},
		{"mastercard_dashes", "5500-0000-0000-0004", PIICounts{Cards: 1}},
		{"amex_15", "378282246310005", PIICounts{Cards: 1}},
		{"luhn_fails", "4111111111111112", PIICounts{}},
		{"mixed_separators_not_one_number", "4111-1111 1111-1111", PIICounts{}},
		{"too_short", "411111111111", PIICounts{}},
		{"longer_digit_run", "41111111111111110000000", PIICounts{}},
		{"order_number_not_card_prefix", "9111111111111111", PIICounts{}},
		{"inside_word", "id4111111111111111", PIICounts{}},
		{"two_cards", "4111111111111111,5500000000000004", PIICounts{Cards: 2}},
		{"email", "contact: alice.smith+shop@mail.example.co.uk.", PIICounts{Emails: 1}},
		{"emails_json", `["bob@example.org","carol@example.net"]`, PIICounts{Emails: 2}},
		{"not_email_no_tld", "user@localhost", PIICounts{}},
		{"not_email_numeric_tld", "a@1.2.3.4", PIICounts{}},
		{"at_alone", "@ @@ a@ @b.com", PIICounts{}},
		{"ssn", "ssn: 123-45-6789", PIICounts{NationalIDs: 1}},
		{"ssn_area_000", "000-12-3456", PIICounts{}},
		{"ssn_area_666", "666-12-3456", PIICounts{}},
		{"ssn_area_9xx", "912-12-3456", PIICounts{}},
		{"ssn_group_00", "123-00-4567", PIICounts{}},
		{"ssn_in_phone", "+1-555-123-45-6789-0", PIICounts{}},
		{"nino", "NI number QQ123456C?", PIICounts{}},
		{"nino_valid", "NI: AB123456C", PIICounts{NationalIDs: 1}},
		{"nino_bad_prefix", "GB123456A BG123456A", PIICounts{}},
		{"nino_bad_suffix", "AB123456E", PIICounts{}},
		{"mixed", "alice@example.com 4111111111111111 123-45-6789 AB123456C", PIICounts{Cards: 1, Emails: 1, NationalIDs: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ScanPII([]byte(tc.in)); got != tc.want {
				t.Fatalf("ScanPII(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestScanPIINoAlloc(t *testing.T) {
	b := []byte(strings.Repeat(`{"email":"a@example.com","pan":"4111111111111111"} `, 100))
	if n := testing.AllocsPerRun(20, func() { ScanPII(b) }); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

func FuzzScanPII(f *testing.F) {
	for _, s := range []string{"4111 1111 1111 1111", "a@b.co", "123-45-6789", "AB123456C", "@@..", strings.Repeat("4", 40)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c := ScanPII(b)
		// Every match takes at least 6 bytes (a@b.co); none overlap.
		if c.Total()*6 > len(b)+6 {
			t.Fatalf("%+v matches in %d bytes", c, len(b))
		}
	})
}

func BenchmarkScanPII(b *testing.B) {
	body := []byte(strings.Repeat(`{"id":1234,"name":"Widget","email":"buyer@example.com","note":"ships in 2 days"},`, 200))
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		ScanPII(body)
	}
}

// TestScanPIIEcho: a response's personal data that the request itself
// carried (a form echoed back, a created record returned) is not counted,
// whether the request sent it raw, percent-encoded or formatted
// otherwise; data the request did not carry is, however many made-up
// values the request stuffs in.
func TestScanPIIEcho(t *testing.T) {
	const resp = `{"email":"Alice@Example.com","card":"4111 1111 1111 1111","ssn":"123-45-6789","nino":"AB123456C","boss":"carol@example.org"}`
	tests := []struct {
		name string
		req  []string
		want PIICounts
	}{
		{"no_request_counts_all", nil, PIICounts{Cards: 1, Emails: 2, NationalIDs: 2}},
		{"json_echo", []string{"/users", `{"email":"alice@example.com","card":"4111111111111111","ssn":"123-45-6789","nino":"AB123456C"}`}, PIICounts{Emails: 1}},
		{"form_echo", []string{"/users", "email=alice%40example.com&card=4111-1111-1111-1111&nino=AB123456C"}, PIICounts{Emails: 1, NationalIDs: 1}},
		{"query_echo", []string{"/lookup?email=alice%40example.com", ""}, PIICounts{Cards: 1, Emails: 1, NationalIDs: 2}},
		{"stuffed_request_hides_nothing", []string{"/users", strings.Repeat("x@example.net 5555555555554444 078-05-1120 ", 50)}, PIICounts{Cards: 1, Emails: 2, NationalIDs: 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var req [][]byte
			for _, r := range tc.req {
				req = append(req, []byte(r))
			}
			if got := ScanPIIEcho([]byte(resp), req); got != tc.want {
				t.Errorf("ScanPIIEcho = %+v, want %+v", got, tc.want)
			}
		})
	}
}
