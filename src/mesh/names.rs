//! Consul's names for things in the mesh: TLS SNI values and SPIFFE IDs.
//!
//! The one place where these strings are built and parsed (Consul: agent/connect/sni.go,
//! uri_*.go). Stub: filled in by the naming work.

/// `[<subset>.]<service>.<namespace>.<dc>.internal.<td>` in the default partition,
/// `[<subset>.]<service>.<namespace>.<partition>.<dc>.internal-v1.<td>` otherwise.
/// Empty namespace/partition mean `default`.
pub fn service_sni(
    service: &str,
    subset: &str,
    namespace: &str,
    partition: &str,
    datacenter: &str,
    trust_domain: &str,
) -> String {
    let ns = if namespace.is_empty() {
        "default"
    } else {
        namespace
    };
    let prefix = if subset.is_empty() {
        String::new()
    } else {
        format!("{subset}.")
    };
    if partition.is_empty() || partition == "default" {
        format!("{prefix}{service}.{ns}.{datacenter}.internal.{trust_domain}")
    } else {
        format!("{prefix}{service}.{ns}.{partition}.{datacenter}.internal-v1.{trust_domain}")
    }
}

/// `<dc>.internal.<td>` in the default partition, `<partition>.<dc>.internal-v1.<td>` otherwise.
pub fn gateway_sni(datacenter: &str, partition: &str, trust_domain: &str) -> String {
    if partition.is_empty() || partition == "default" {
        format!("{datacenter}.internal.{trust_domain}")
    } else {
        format!("{partition}.{datacenter}.internal-v1.{trust_domain}")
    }
}
