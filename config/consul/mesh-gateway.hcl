# sidegate as a mesh gateway, as `consul services register` takes it:
#
#   consul services register config/consul/mesh-gateway.hcl
#
# and `[consul] gateway_service_id = "mesh-gateway"`. sidegate listens on Address:Port (Consul's
# rule for gateways); `lan` is where this datacenter's sidecars reach it, `wan` where other
# datacenters' gateways do. Replace the documentation addresses (192.0.2.10, 203.0.113.10)
# with the host's. The check asks sidegate's admin endpoint whether it serves a complete,
# fresh state ([admin] listen, 127.0.0.1:19100 by default).
service {
  name = "mesh-gateway"
  id   = "mesh-gateway"
  kind = "mesh-gateway"
  address = "192.0.2.10"
  port    = 8443
  tagged_addresses {
    lan {
      address = "192.0.2.10"
      port    = 8443
    }
    wan {
      address = "203.0.113.10"
      port    = 8443
    }
  }
  check {
    name     = "sidegate ready"
    http     = "http://127.0.0.1:19100/ready"
    interval = "10s"
    timeout  = "2s"
  }
}
