package microservices.authz_test

import rego.v1

import data.microservices.authz

owner_in_hours := {
	"user": {"id": "alice", "role": "user"},
	"resource": {"owner": "alice", "sensitivity_level": 2},
	"context": {"time": 10},
}

test_owner_in_hours if authz.allow with input as owner_in_hours

test_owner_out_of_hours if {
	not authz.allow with input as object.union(owner_in_hours, {"context": {"time": 18}})
}

test_above_clearance if {
	not authz.allow with input as object.union(owner_in_hours, {"resource": {"owner": "alice", "sensitivity_level": 4}})
}

test_non_owner if {
	not authz.allow with input as object.union(owner_in_hours, {"user": {"id": "carol", "role": "admin"}})
}

test_clearance_from_data if {
	authz.user_clearance_level == 5 with input as {"user": {"id": "carol"}}
}
