package traffic

import "bytes"

// PII kinds a response body sample is scanned for.
const (
	PIICard       = "card"        // payment card number, Luhn-checked
	PIIEmail      = "email"       // e-mail address
	PIINationalID = "national_id" // US SSN (ddd-dd-dddd), UK National Insurance number
)

// PIICounts is how many of each PII kind a sample held.
type PIICounts struct {
	Cards       int `json:"cards,omitempty"`
	Emails      int `json:"emails,omitempty"`
	NationalIDs int `json:"national_ids,omitempty"`
}

// Total is the number of matches of every kind.
func (c PIICounts) Total() int { return c.Cards + c.Emails + c.NationalIDs }

// Add adds o to c.
func (c *PIICounts) Add(o PIICounts) {
	c.Cards += o.Cards
	c.Emails += o.Emails
	c.NationalIDs += o.NationalIDs
}

// ScanPII counts the personal data patterns in b, in one pass, without
// allocating:
//
//   - card numbers: 13 to 19 digits, optionally in groups separated by
//     single spaces or hyphens, starting with 2 to 6 (the major networks'
//     ranges), passing the Luhn check, not part of a longer digit run;
//   - e-mail addresses: a local part of letters, digits and ._%+-, an
//     "@", a domain with at least one dot and a top-level label of two or
//     more letters;
//   - national IDs: US social security numbers written ddd-dd-dddd with a
//     valid area (not 000, 666 or 9xx), group (not 00) and serial (not
//     0000), and UK National Insurance numbers (two prefix letters from
//     the issued ranges, six digits, a suffix A-D), either alone, not
//     inside longer words or digit runs.
//
// The sidecar runs it on sampled response bodies off the request path
// (see internal/proxy); the bytes themselves are never kept or reported.
func ScanPII(b []byte) PIICounts {
	return scanPII(b, nil, nil)
}

// ScanPIIEcho is ScanPII of a response body b, not counting the matches
// the request itself carried (req: its target and the first bytes of its
// body): a form echoed back, a created record returned to its creator
// discloses nothing the caller did not have. A match is the request's
// when the same value, normalized (a card number's or SSN's digits, an
// e-mail address in lower case), is in req as sent or percent-decoded.
// Only exact values are discounted, never a count: a request stuffed
// with made-up values hides nothing, and one that hides a value already
// knew it. It allocates for the request's values; the bytes are never
// kept.
func ScanPIIEcho(b []byte, req [][]byte) PIICounts {
	sent := map[string]struct{}{}
	for _, r := range req {
		scanPII(r, nil, sent)
		if d, ok := percentDecode(r); ok {
			scanPII(d, nil, sent)
		}
	}
	if len(sent) == 0 {
		return scanPII(b, nil, nil)
	}
	return scanPII(b, sent, nil)
}

// scanPII counts the matches in b, skipping those whose normalized value
// is in skip; it adds every match's normalized value to collect when
// collect is not nil. Without either it does not allocate.
func scanPII(b []byte, skip, collect map[string]struct{}) PIICounts {
	var c PIICounts
	// seen reports whether the match b[s:e] of kind is the request's, and
	// records it when collecting.
	seen := func(kind string, s, e int) bool {
		if skip == nil && collect == nil {
			return false
		}
		k := piiKey(kind, b[s:e])
		if collect != nil {
			collect[k] = struct{}{}
		}
		_, ok := skip[k]
		return ok
	}
	for i := 0; i < len(b); {
		ch := b[i]
		switch {
		case isDigit(ch) && (i == 0 || !isAlnum(b[i-1])):
			if n := ssnAt(b, i); n > 0 {
				if !seen(PIINationalID, i, i+n) {
					c.NationalIDs++
				}
				i += n
				continue
			}
			if n := cardAt(b, i); n > 0 {
				if !seen(PIICard, i, i+n) {
					c.Cards++
				}
				i += n
				continue
			}
			for i < len(b) && isDigit(b[i]) {
				i++
			}
			continue
		case ch == '@':
			if l, e, ok := emailAround(b, i); ok {
				if !seen(PIIEmail, l, e) {
					c.Emails++
				}
				// Skip the domain so "a@b.c@d.e" counts once per "@".
				i++
				for i < len(b) && isDomainChar(b[i]) {
					i++
				}
				continue
			}
		case isUpper(ch) && (i == 0 || !isAlnum(b[i-1])):
			if n := ninoAt(b, i); n > 0 {
				if !seen(PIINationalID, i, i+n) {
					c.NationalIDs++
				}
				i += n
				continue
			}
		}
		i++
	}
	return c
}

// piiKey is the normalized value of match m of kind: its digits for a
// card number or a national ID written with digits, lower case for an
// e-mail address (and a UK NI number as it is).
func piiKey(kind string, m []byte) string {
	k := make([]byte, 0, len(m)+1)
	k = append(k, kind[0])
	for _, c := range m {
		switch {
		case kind == PIIEmail && isUpper(c):
			k = append(k, c+'a'-'A')
		case kind == PIIEmail || isAlnum(c):
			k = append(k, c)
		}
	}
	return string(k)
}

// percentDecode is b with %XX escapes and '+' decoded, as a form body or
// a query carries values; ok is false when b has neither.
func percentDecode(b []byte) ([]byte, bool) {
	if bytes.IndexByte(b, '%') < 0 && bytes.IndexByte(b, '+') < 0 {
		return nil, false
	}
	return AppendQueryUnescaped(make([]byte, 0, len(b)), b), true
}

// AppendQueryUnescaped appends s to dst with '+' and valid %XX escapes
// decoded, as a query or a form body carries them; anything else (a
// '%' not followed by two hex digits) is kept as it is. Lenient where
// url.QueryUnescape refuses: the sidecar reads what a hostile request
// sent, and an app that decodes leniently must not see another name.
func AppendQueryUnescaped[T ~string | ~[]byte](dst []byte, s T) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			dst = append(dst, ' ')
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			dst = append(dst, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

func isHex(c byte) bool { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

func unhex(c byte) byte {
	switch {
	case isDigit(c):
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isUpper(c byte) bool { return c >= 'A' && c <= 'Z' }
func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isAlnum(c byte) bool { return isDigit(c) || isAlpha(c) }

// cardAt returns the length of a card number starting at b[i], 0 if none.
// Digits may come in groups separated by one kind of separator (space or
// hyphen); a number ends at a group boundary, so "4111 1111 1111 1111
// 123" is a card number followed by other digits.
func cardAt(b []byte, i int) int {
	if b[i] < '2' || b[i] > '6' {
		return 0
	}
	var digits [19]byte
	// ends[k] is the byte offset after the k-th group, counts[k] its
	// digit count so far.
	var ends, counts [19]int
	groups := 0
	n, j := 0, i
	var sep byte
	for j < len(b) {
		c := b[j]
		if isDigit(c) {
			if n == len(digits) {
				if sep == 0 {
					return 0 // a longer run of digits: not a card number
				}
				break
			}
			digits[n] = c - '0'
			n++
			j++
			continue
		}
		if (c == ' ' || c == '-') && j+1 < len(b) && isDigit(b[j+1]) && (sep == 0 || c == sep) && groups < len(ends)-1 {
			sep = c
			ends[groups], counts[groups] = j, n
			groups++
			j++
			continue
		}
		break
	}
	if n == len(digits) && j < len(b) && isDigit(b[j]) {
		// Digits go on past 19: only a group boundary can end a number.
	} else {
		if j < len(b) && isAlpha(b[j]) {
			return 0
		}
		ends[groups], counts[groups] = j, n
		groups++
	}
	for k := groups - 1; k >= 0; k-- {
		if counts[k] >= 13 && counts[k] <= 19 && luhn(digits[:counts[k]]) {
			return ends[k] - i
		}
		if sep == 0 {
			break // an unseparated run is one number or none
		}
	}
	return 0
}

// luhn reports whether the digits pass the Luhn check: from the
// rightmost, every second digit doubled.
func luhn(digits []byte) bool {
	sum := 0
	for k := range digits {
		d := int(digits[len(digits)-1-k])
		if k%2 == 1 {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
	}
	return sum%10 == 0
}

// ssnAt returns 11 when b[i:] starts with a valid ddd-dd-dddd not followed
// by another digit, else 0.
func ssnAt(b []byte, i int) int {
	if i+11 > len(b) {
		return 0
	}
	s := b[i : i+11]
	for k, c := range s {
		if k == 3 || k == 6 {
			if c != '-' {
				return 0
			}
		} else if !isDigit(c) {
			return 0
		}
	}
	// Not a piece of a longer number (a phone number, an account).
	if i > 0 && b[i-1] == '-' || i+11 < len(b) && (isAlnum(b[i+11]) || b[i+11] == '-' && i+12 < len(b) && isDigit(b[i+12])) {
		return 0
	}
	area := int(s[0]-'0')*100 + int(s[1]-'0')*10 + int(s[2]-'0')
	group := int(s[4]-'0')*10 + int(s[5]-'0')
	serial := int(s[7]-'0')*1000 + int(s[8]-'0')*100 + int(s[9]-'0')*10 + int(s[10]-'0')
	if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
		return 0
	}
	return 11
}

// ninoAt returns 9 when b[i:] is a UK National Insurance number
// (AB123456C), not followed by a letter or digit.
func ninoAt(b []byte, i int) int {
	if i+9 > len(b) {
		return 0
	}
	s := b[i : i+9]
	p1, p2 := s[0], s[1]
	if !isUpper(p2) {
		return 0
	}
	// Letters never used in a prefix: D, F, I, Q, U, V (both); O (second).
	bad := func(c byte) bool { return c == 'D' || c == 'F' || c == 'I' || c == 'Q' || c == 'U' || c == 'V' }
	if bad(p1) || bad(p2) || p2 == 'O' {
		return 0
	}
	switch string(s[:2]) {
	case "BG", "GB", "NK", "KN", "TN", "NT", "ZZ":
		return 0 // never issued
	}
	for _, c := range s[2:8] {
		if !isDigit(c) {
			return 0
		}
	}
	if s[8] < 'A' || s[8] > 'D' {
		return 0
	}
	if i+9 < len(b) && isAlnum(b[i+9]) {
		return 0
	}
	return 9
}

func isLocalChar(c byte) bool {
	return isAlnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-'
}

func isDomainChar(c byte) bool { return isAlnum(c) || c == '.' || c == '-' }

// emailAround reports whether the "@" at b[at] joins a local part and a
// domain with a dot and a top-level label of at least two letters, and
// where that address starts and ends.
func emailAround(b []byte, at int) (start, end int, ok bool) {
	l := at
	for l > 0 && isLocalChar(b[l-1]) && at-l < 64 {
		l--
	}
	if l == at {
		return 0, 0, false
	}
	r := at + 1
	lastDot := -1
	end = r
	for end < len(b) && isDomainChar(b[end]) && end-r < 253 {
		if b[end] == '.' {
			lastDot = end
		}
		end++
	}
	// A trailing dot ends the sentence, not the domain.
	for end > r && b[end-1] == '.' {
		end--
		if lastDot == end {
			lastDot = -1
			for k := r; k < end; k++ {
				if b[k] == '.' {
					lastDot = k
				}
			}
		}
	}
	if lastDot <= r || end-lastDot-1 < 2 {
		return 0, 0, false
	}
	for k := lastDot + 1; k < end; k++ {
		if !isAlpha(b[k]) {
			return 0, 0, false
		}
	}
	return l, end, true
}
