# Ownership: a document may be read by its owner (from the data document
# "documents") or by an admin; anyone else gets a 404, so the document's
# existence does not leak. The owner is passed upstream in a header.
package ownership

import rego.v1

default decision := {"allow": false, "status": 404, "reason": "not the owner"}

decision := {"allow": true, "headers": {"x-document-owner": owner}} if {
	owner := data.documents[input.attributes.doc].owner
	permitted(owner)
}

permitted(owner) if owner == input.auth.claims.sub

permitted(_) if "admin" in input.auth.claims.roles
