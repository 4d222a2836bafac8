# Role-based access: each role of the caller's token grants methods on
# path prefixes, from the data document "roles".
package rbac

import rego.v1

default allow := false

allow if {
	some role in input.auth.claims.roles
	some grant in data.roles[role]
	input.request.method in grant.methods
	startswith(input.request.path, grant.prefix)
}
