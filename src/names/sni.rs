//! TLS SNI values, exactly as Consul builds them (agent/connect/sni.go, PeeringServerSAN in
//! agent/connect/uri_server.go).
//!
//! The SNI is how a mesh gateway routes without terminating TLS: it matches `*.<gateway_sni>`
//! suffixes and exact names, and otherwise uses the whole SNI as a cluster name. A single
//! differing byte here means a gateway (ours or Consul's Envoy) drops the connection, so these
//! functions copy Consul's string layout label for label and add no validation of their own.

/// Routing-type label for the default partition (sni.go `internal`).
const INTERNAL: &str = "internal";
/// Routing-type label for any other partition (sni.go `internal + "-" + version`). It is what
/// tells `v2.api.default.dc1.internal.<td>` (subset v2) apart from
/// `api.default.ap1.dc1.internal-v1.<td>` (partition ap1): both have five labels before `<td>`.
const INTERNAL_V1: &str = "internal-v1";
/// Routing-type label for services imported from a cluster peer (sni.go `external`).
const EXTERNAL: &str = "external";

/// Consul's spelling of "not given": an empty namespace or partition is `default`
/// (sni.go `ServiceSNI`, `GatewaySNI`, `PeeredServiceSNI`).
fn or_default(s: &str) -> &str {
    if s.is_empty() {
        "default"
    } else {
        s
    }
}

/// `[<subset>.]<service>.<namespace>.<dc>.internal.<td>` in the default partition,
/// `[<subset>.]<service>.<namespace>.<partition>.<dc>.internal-v1.<td>` otherwise.
/// Empty namespace/partition mean `default` (sni.go `ServiceSNI`; `TargetSNI` and the service
/// branch of `UpstreamSNI` are this function with the target's/upstream's fields).
pub fn service_sni(
    service: &str,
    subset: &str,
    namespace: &str,
    partition: &str,
    datacenter: &str,
    trust_domain: &str,
) -> String {
    let ns = or_default(namespace);
    let prefix = if subset.is_empty() {
        String::new()
    } else {
        format!("{subset}.")
    };
    // Only the literal "default" (after defaulting) drops the partition label; Consul does
    // not fold case here, so "Default" is a non-default partition on the wire.
    match or_default(partition) {
        "default" => format!("{prefix}{service}.{ns}.{datacenter}.{INTERNAL}.{trust_domain}"),
        ap => format!("{prefix}{service}.{ns}.{ap}.{datacenter}.{INTERNAL_V1}.{trust_domain}"),
    }
}

/// `<dc>.internal.<td>` in the default partition, `<partition>.<dc>.internal-v1.<td>` otherwise
/// (sni.go `GatewaySNI`, formerly `DatacenterSNI`). A mesh gateway uses it as the cluster name
/// for "everything bound for that dc/partition" and matches `*.<this>` as the SNI wildcard.
pub fn gateway_sni(datacenter: &str, partition: &str, trust_domain: &str) -> String {
    match or_default(partition) {
        "default" => format!("{datacenter}.{INTERNAL}.{trust_domain}"),
        ap => format!("{ap}.{datacenter}.{INTERNAL_V1}.{trust_domain}"),
    }
}

/// `<name>.default.<dc>.query.<td>` for a prepared-query upstream (sni.go `QuerySNI`). The
/// `default` label is a literal in Consul, not a namespace, and there is no subset form.
pub fn query_sni(name: &str, datacenter: &str, trust_domain: &str) -> String {
    format!("{name}.default.{datacenter}.query.{trust_domain}")
}

/// `<service>.<namespace>.<partition>.<peer>.external.<td>` for a service imported from a
/// cluster peer (sni.go `PeeredServiceSNI`). Unlike the service form the partition label is
/// always present. Consul panics on an empty peer name; we build the string anyway (no panics
/// on caller input), so callers must not pass one.
pub fn peered_service_sni(
    service: &str,
    namespace: &str,
    partition: &str,
    peer: &str,
    trust_domain: &str,
) -> String {
    let ns = or_default(namespace);
    let ap = or_default(partition);
    format!("{service}.{ns}.{ap}.{peer}.{EXTERNAL}.{trust_domain}")
}

/// `server.<dc>.peering.<td>`: the DNS SAN of Consul servers and the exact SNI a mesh gateway
/// matches for peering control-plane traffic (uri_server.go `PeeringServerSAN`).
pub fn peering_server_san(datacenter: &str, trust_domain: &str) -> String {
    format!("server.{datacenter}.peering.{trust_domain}")
}
