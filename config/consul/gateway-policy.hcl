# ACL rules for sidegate as a mesh gateway (config/consul/mesh-gateway.hcl):
#
#   consul acl policy create -name sidegate-gateway -rules @config/consul/gateway-policy.hcl
#   consul acl token create -policy-name sidegate-gateway
#
# `sidegate check --agent` names any of these the token lacks.

# Its registration (write: the token can also register it).
service "mesh-gateway" {
  policy = "write"
}
# Every service of its datacenter: one exact route each, and one per subset of its
# service-resolver entry; and the gateways of other datacenters, found by kind.
service_prefix "" {
  policy = "read"
}
# Where those services' instances run.
node_prefix "" {
  policy = "read"
}
# The agent's datacenter: Consul before 1.9 leaves it out of registrations.
agent_prefix "" {
  policy = "read"
}
# Enterprise only, to route the other admin partitions of its datacenter (/v1/partitions):
# operator = "read"
