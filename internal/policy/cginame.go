package policy

// AppendCGIName appends name to b as CGI, WSGI, PHP and Rack apps read a
// header name (HTTP_X_USER for X-User and X_User alike): ASCII lower case
// (header names are ASCII tokens), "_" read as "-", so a name and its "_"
// twin append the same bytes. (A PHP app reads "." as "_" too; the edge
// filter drops names holding one.) The sidecar drops the "_" twins of
// headers its policies read by it, and the ext_authz server removes them
// the same way.
func AppendCGIName(b []byte, name string) []byte {
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '_':
			c = '-'
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return b
}
