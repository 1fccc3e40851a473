# ACL rules for sidegate as web's sidecar (config/consul/web.hcl):
#
#   consul acl policy create -name sidegate-web -rules @config/consul/sidecar-policy.hcl
#   consul acl token create -policy-name sidegate-web
#
# `sidegate check --agent` names any of these the token lacks.

# The leaf certificate for web, and the agent's intention answers for web's callers.
service "web" {
  policy = "write"
}
# Its own registration (and finding it by sidecar_for).
service "web-sidecar-proxy" {
  policy = "read"
}
# Each upstream: its instances and its service-defaults.
service "db" {
  policy = "read"
}
# Where the upstreams' instances run.
node_prefix "" {
  policy = "read"
}
# With a mesh-gateway mode of local or remote: the gateways.
service "mesh-gateway" {
  policy = "read"
}
