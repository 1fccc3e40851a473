# The service `web` with sidegate as its sidecar, as `consul services register` takes it:
#
#   consul services register config/consul/web.hcl
#
# Consul registers the sidecar too (ID web-sidecar-proxy, kind connect-proxy), which
# sidegate finds with `[consul] sidecar_for = "web"` and follows: its public listener (port
# 21000 on the service's address), web's local address and port, and the upstreams below.
service {
  name = "web"
  port = 8080
  check {
    name     = "web listening"
    tcp      = "127.0.0.1:8080"
    interval = "10s"
  }
  connect {
    sidecar_service {
      port = 21000
      proxy {
        # web reaches db at 127.0.0.1:9191; sidegate dials db's instances over mTLS.
        upstreams {
          destination_name = "db"
          local_bind_port  = 9191
        }
      }
    }
  }
}
