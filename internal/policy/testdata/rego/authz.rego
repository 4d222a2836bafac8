package microservices.authz
import future.keywords.if
import future.keywords.in

default allow = false
allow if {
  input.user.role in ["admin", "user"]
  input.resource.owner == input.user.id
  input.context.time >= 9
  input.context.time <= 17
  input.resource.sensitivity_level <= user_clearance_level
}
user_clearance_level := data.clearance[input.user.id]
