//! Consul's own naming test vectors (tests/data/*_vectors.toml, copied unchanged as extracted
//! from hashicorp/consul at a pinned commit) run against
//! `sidegate::names`.
//!
//! Every table is deserialized with `deny_unknown_fields`, so a table or field this file does
//! not know about fails the test instead of being ignored. Every row is either checked or
//! declared unmapped with a reason; the per-table counts are compared with the number of
//! `[[table]]` headers in the raw file, so a table that deserializes empty fails too.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde::Deserialize;
use sidegate::names::*;

fn read(file: &str) -> String {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Checked/unmapped counts and failures, reported all at once at the end.
#[derive(Default)]
struct Report {
    checked: BTreeMap<&'static str, usize>,
    unmapped: BTreeMap<&'static str, usize>,
    failures: Vec<String>,
}

impl Report {
    /// One row checked; `checks` are (what, got, want).
    fn row(&mut self, table: &'static str, label: &str, checks: &[(&str, &str, &str)]) {
        *self.checked.entry(table).or_default() += 1;
        for (what, got, want) in checks {
            if got != want {
                self.failures.push(format!(
                    "{table} [{label}] {what}:\n    got  {got:?}\n    want {want:?}"
                ));
            }
        }
    }

    /// One row that no function of ours can produce, with why (kept to the rows listed in
    /// `expected_unmapped` of `finish`).
    fn not_mapped(&mut self, table: &'static str, _why: &str) {
        *self.unmapped.entry(table).or_default() += 1;
    }

    fn fail(&mut self, table: &str, label: &str, msg: String) {
        self.failures.push(format!("{table} [{label}] {msg}"));
    }

    /// `expected_unmapped`: (table, rows that are known not to map). Everything else in the
    /// file must have been checked.
    fn finish(self, raw: &str, tables: &[&'static str], expected_unmapped: &[(&str, usize)]) {
        let mut problems = self.failures;
        for table in tables {
            let header = format!("[[{table}]]");
            let in_file = raw.lines().filter(|l| l.trim() == header).count();
            let checked = self.checked.get(table).copied().unwrap_or(0);
            let unmapped = self.unmapped.get(table).copied().unwrap_or(0);
            let allowed = expected_unmapped
                .iter()
                .find(|(t, _)| t == table)
                .map_or(0, |(_, n)| *n);
            eprintln!("{table}: {in_file} rows in file, {checked} checked, {unmapped} unmapped");
            if in_file == 0 || checked == 0 {
                problems.push(format!(
                    "{table}: {in_file} rows in file, {checked} checked"
                ));
            }
            if unmapped != allowed
                || checked + unmapped < in_file
                || checked < in_file.saturating_sub(allowed)
            {
                problems.push(format!(
                    "{table}: {in_file} rows in file, {checked} checked, {unmapped} unmapped \
                     (expected {allowed} unmapped)"
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "{} problem(s):\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
}

/// Labels of `s` before `suffix` (which starts with '.'), or None if `s` doesn't end in it.
fn labels_before<'a>(s: &'a str, suffix: &str) -> Option<Vec<&'a str>> {
    Some(s.strip_suffix(suffix)?.split('.').collect())
}

// ---------------------------------------------------------------------------------------------
// sni_vectors.toml
// ---------------------------------------------------------------------------------------------

/// Trust domain of the golden_* tables (stated in the file's comment above
/// `[[golden_mesh_gateway_listener]]`); the gateway/proxy in those goldens is in dc1.
const GOLDEN_TD: &str = "11111111-2222-3333-4444-555555555555.consul";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SniFile {
    meta: toml::Table,
    service_sni: Vec<ServiceRow>,
    upstream_sni: Vec<UpstreamRow>,
    gateway_sni: Vec<GatewayRow>,
    datacenter_sni_historical: Vec<DcHistoricalRow>,
    peered_service_sni: Vec<PeeredRow>,
    query_sni: Vec<QueryRow>,
    target_sni: Vec<ServiceRow>,
    peering_server_san: Vec<PeeringServerSanRow>,
    golden_mesh_gateway_listener: Vec<GoldenListenerRow>,
    golden_mesh_gateway_local_cluster: Vec<GoldenLocalClusterRow>,
    golden_upstream_cluster: Vec<GoldenUpstreamRow>,
    cluster_name_parse: Vec<ClusterParseRow>,
    derived: Vec<DerivedRow>,
}

/// `ServiceSNI` and `TargetSNI` (the latter is ServiceSNI over the target's fields).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceRow {
    comment: String,
    service: String,
    subset: String,
    namespace: String,
    partition: String,
    datacenter: String,
    trust_domain: String,
    expected: String,
}

/// ServiceSNI over a row's fields: the ServiceSNI and TargetSNI tables share this shape.
fn sni_of(row: &ServiceRow) -> String {
    service_sni(
        &row.service,
        &row.subset,
        &row.namespace,
        &row.partition,
        &row.datacenter,
        &row.trust_domain,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamRow {
    comment: String,
    destination_type: String,
    destination_name: String,
    destination_namespace: String,
    upstream_datacenter: String,
    subset: String,
    local_dc: String,
    trust_domain: String,
    expected: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayRow {
    comment: String,
    datacenter: String,
    partition: String,
    trust_domain: String,
    expected: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DcHistoricalRow {
    datacenter: String,
    trust_domain: String,
    expected: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeeredRow {
    service: String,
    namespace: String,
    partition: String,
    peer_name: String,
    trust_domain: String,
    expected: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRow {
    name: String,
    datacenter: String,
    trust_domain: String,
    expected: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeeringServerSanRow {
    datacenter: String,
    trust_domain: String,
    expected: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GoldenListenerRow {
    golden: String,
    match_kind: String,
    server_name: String,
    tcp_proxy_cluster: String,
    stat_prefix: Option<String>,
    #[allow(dead_code)]
    note: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GoldenLocalClusterRow {
    cluster: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GoldenUpstreamRow {
    cluster: String,
    sni: String,
    #[serde(default)]
    san_exact: Vec<String>,
    #[allow(dead_code)]
    note: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterParseRow {
    cluster: String,
    custom_hash: String,
    service_subset: String,
    service: String,
    namespace: String,
    partition: Option<String>,
    datacenter: Option<String>,
    peer: Option<String>,
    routing_type: String,
    trust_domain_uuid: String,
    target: String,
    #[allow(dead_code)]
    note: Option<String>,
}

/// Rows computed from sni.go by the vector author; which fields are set depends on `function`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DerivedRow {
    from_test: bool,
    function: String,
    service: Option<String>,
    subset: Option<String>,
    namespace: Option<String>,
    partition: Option<String>,
    datacenter: Option<String>,
    peer_name: Option<String>,
    trust_domain: String,
    expected: String,
    mesh_gateway_wildcard: Option<String>,
    matched_by_wildcard: Option<String>,
    #[allow(dead_code)]
    note: Option<String>,
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("")
}

#[test]
fn sni_vectors() {
    let raw = read("sni_vectors.toml");
    let file: SniFile = toml::from_str(&raw).expect("sni_vectors.toml deserializes");
    let mut r = Report::default();
    assert!(file.meta.contains_key("consul_commit"));

    for row in &file.service_sni {
        let got = sni_of(row);
        r.row("service_sni", &row.comment, &[("sni", &got, &row.expected)]);
    }

    // UpstreamSNI (sni.go) has no function of its own here: production sidecars take SNIs from
    // the compiled discovery chain (TargetSNI), so these rows go through service_sni/query_sni
    // with UpstreamSNI's two rules spelled out: the upstream's datacenter overrides the local
    // one, and destination_type prepared_query selects QuerySNI. The rows carry no
    // destination_partition, i.e. "" (Go zero value).
    for row in &file.upstream_sni {
        let dc = if row.upstream_datacenter.is_empty() {
            &row.local_dc
        } else {
            &row.upstream_datacenter
        };
        let got = match row.destination_type.as_str() {
            "prepared_query" => query_sni(&row.destination_name, dc, &row.trust_domain),
            "service" | "" => service_sni(
                &row.destination_name,
                &row.subset,
                &row.destination_namespace,
                "",
                dc,
                &row.trust_domain,
            ),
            other => {
                r.fail(
                    "upstream_sni",
                    &row.comment,
                    format!("destination_type {other:?}"),
                );
                continue;
            }
        };
        r.row(
            "upstream_sni",
            &row.comment,
            &[("sni", &got, &row.expected)],
        );
    }

    for row in &file.gateway_sni {
        let got = gateway_sni(&row.datacenter, &row.partition, &row.trust_domain);
        r.row("gateway_sni", &row.comment, &[("sni", &got, &row.expected)]);
    }

    // DatacenterSNI(dc, td) == GatewaySNI(dc, "", td).
    for row in &file.datacenter_sni_historical {
        let got = gateway_sni(&row.datacenter, "", &row.trust_domain);
        let label = &row.datacenter;
        r.row(
            "datacenter_sni_historical",
            label,
            &[("sni", &got, &row.expected)],
        );
    }

    // Includes the test quirk of passing "internal.<td>" as the trust domain.
    for row in &file.peered_service_sni {
        let got = peered_service_sni(
            &row.service,
            &row.namespace,
            &row.partition,
            &row.peer_name,
            &row.trust_domain,
        );
        r.row(
            "peered_service_sni",
            &row.service,
            &[("sni", &got, &row.expected)],
        );
    }

    for row in &file.query_sni {
        let got = query_sni(&row.name, &row.datacenter, &row.trust_domain);
        r.row("query_sni", &row.name, &[("sni", &got, &row.expected)]);
    }

    for row in &file.target_sni {
        let got = sni_of(row);
        r.row("target_sni", &row.comment, &[("sni", &got, &row.expected)]);
    }

    for row in &file.peering_server_san {
        let got = peering_server_san(&row.datacenter, &row.trust_domain);
        r.row(
            "peering_server_san",
            &row.datacenter,
            &[("san", &got, &row.expected)],
        );
    }

    // Mesh-gateway listener filter chains. Unmapped (3 rows):
    //  - the `sni_cluster` catch-all: it has no server name; it uses the SNI verbatim;
    //  - the two WAN-federation rows (`*.server.dc2.consul`, `node1.server.dc1.consul`): they
    //    are tlsutil.Configurator.ServerSNI names in the agent's DNS domain, not mesh names.
    let t = "golden_mesh_gateway_listener";
    for row in &file.golden_mesh_gateway_listener {
        let label = format!("{} {}", row.golden, row.server_name);
        let remote = row
            .stat_prefix
            .as_deref()
            .and_then(|p| p.strip_prefix("mesh_gateway_remote."))
            .and_then(|p| p.split_once('.'));
        let external = labels_before(&row.server_name, &format!(".external.{GOLDEN_TD}"));
        match (row.match_kind.as_str(), remote, external.as_deref()) {
            // Remote dc/partition: "*.<GatewaySNI>" routed to the GatewaySNI cluster; the
            // partition and dc are the last two labels of the stat prefix.
            ("wildcard", Some((ap, dc)), _) => {
                let cluster = gateway_sni(dc, ap, GOLDEN_TD);
                let wildcard = format!("*.{cluster}");
                r.row(
                    t,
                    &label,
                    &[
                        ("cluster", &row.tcp_proxy_cluster, &cluster),
                        ("server_name", &row.server_name, &wildcard),
                    ],
                );
            }
            // Service exported to a peer: exact PeeredServiceSNI routed to
            // "exported~" + the local ServiceSNI (gateway in dc1).
            ("exact", _, Some(&[svc, ns, ap, peer])) => {
                let sni = peered_service_sni(svc, ns, ap, peer, GOLDEN_TD);
                let cluster = format!(
                    "exported~{}",
                    service_sni(svc, "", ns, ap, "dc1", GOLDEN_TD)
                );
                r.row(
                    t,
                    &label,
                    &[
                        ("server_name", &row.server_name, &sni),
                        ("cluster", &row.tcp_proxy_cluster, &cluster),
                    ],
                );
            }
            ("exact", _, _) if row.server_name.contains(".peering.") => {
                let san = peering_server_san("dc1", GOLDEN_TD);
                r.row(
                    t,
                    &label,
                    &[
                        ("server_name", &row.server_name, &san),
                        ("cluster", &row.tcp_proxy_cluster, &san),
                    ],
                );
            }
            ("sni_cluster", _, _) => r.not_mapped(t, "catch-all: cluster := SNI verbatim"),
            _ if row.server_name.ends_with(".server.dc2.consul")
                || row.server_name == "node1.server.dc1.consul" =>
            {
                r.not_mapped(t, "WAN-federation server SNI (tlsutil), not a mesh name");
            }
            _ => r.fail(t, &label, "row shape not recognised".into()),
        }
    }

    // Local service (+subset) clusters on the dc1 gateway: ServiceSNI in dc1.
    let t = "golden_mesh_gateway_local_cluster";
    for row in &file.golden_mesh_gateway_local_cluster {
        let labels = labels_before(&row.cluster, &format!(".default.dc1.internal.{GOLDEN_TD}"));
        let (subset, svc) = match labels.as_deref() {
            Some(&[svc]) => ("", svc),
            Some(&[subset, svc]) => (subset, svc),
            _ => {
                r.fail(
                    t,
                    &row.cluster,
                    "not a dc1 default-namespace service SNI".into(),
                );
                continue;
            }
        };
        let want = service_sni(svc, subset, "default", "", "dc1", GOLDEN_TD);
        r.row(t, &row.cluster, &[("cluster", &row.cluster, &want)]);
    }

    // Sidecar upstream clusters: the SNI sent, and the URI SAN demanded of the server.
    let t = "golden_upstream_cluster";
    for row in &file.golden_upstream_cluster {
        let internal = labels_before(&row.sni, &format!(".internal.{GOLDEN_TD}"));
        let query = labels_before(&row.sni, &format!(".query.{GOLDEN_TD}"));
        let external = row.sni.split_once(".external.");
        match (internal.as_deref(), query.as_deref(), external) {
            // Failover target: ServiceSNI of the target; SAN = its service ID on the local
            // trust domain; cluster = "failover-target~<n>~" + the chain's primary (dc1) SNI.
            (Some(&[svc, ns, dc]), _, _) => {
                let sni = service_sni(svc, "", ns, "", dc, GOLDEN_TD);
                let san = SpiffeId::service(GOLDEN_TD, "", ns, dc, svc).to_string();
                let primary = service_sni(svc, "", ns, "", "dc1", GOLDEN_TD);
                let cluster_tail = row.cluster.rsplit('~').next().unwrap_or("");
                r.row(
                    t,
                    &row.cluster,
                    &[
                        ("sni", &row.sni, &sni),
                        ("san_exact", &row.san_exact.join(","), &san),
                        ("cluster after last '~'", cluster_tail, &primary),
                    ],
                );
            }
            // Prepared query: QuerySNI, used as the cluster name too. The SANs are the
            // identities of the instances the query returned, which no name function derives;
            // they must still be Consul service IDs on our trust domain that render back as is.
            (_, Some(&[name, "default", dc]), _) => {
                let sni = query_sni(name, dc, GOLDEN_TD);
                let mut checks = vec![
                    ("sni", row.sni.as_str(), sni.clone()),
                    ("cluster", row.cluster.as_str(), sni),
                ];
                for san in &row.san_exact {
                    let rendered = match SpiffeId::parse(san) {
                        Ok(id @ SpiffeId::Service { .. }) => id.to_string(),
                        Ok(other) => format!("{other:?}"),
                        Err(e) => format!("error: {e}"),
                    };
                    checks.push(("san_exact round trip", san, rendered));
                }
                let checks: Vec<_> = checks
                    .iter()
                    .map(|(w, g, x)| (*w, *g, x.as_str()))
                    .collect();
                r.row(t, &row.cluster, &checks);
            }
            // Peered upstream: the SNI is the exporter's PeeredServiceSNI on the exporter's trust
            // domain. The cluster name (which omits the partition) is an Envoy-side name no
            // function of ours produces, so only the SNI is checked.
            (_, _, Some((head, td))) => match head.split('.').collect::<Vec<_>>().as_slice() {
                &[svc, ns, ap, peer] => {
                    let sni = peered_service_sni(svc, ns, ap, peer, td);
                    r.row(t, &row.cluster, &[("sni", &row.sni, &sni)]);
                }
                _ => r.fail(t, &row.cluster, "peered SNI shape".into()),
            },
            _ => r.fail(t, &row.cluster, "row shape not recognised".into()),
        }
    }

    // These rows are Consul's stats-tag regexes *splitting* cluster names. sidegate does not
    // parse SNIs (like Consul's gateway it matches suffixes/exact names),
    // so the rows are run in the other direction: building the SNI from the split components
    // must give back the cluster name (minus the "<hash>~" prefix), and the regex's "target"
    // tag must be everything before the routing type. Unmapped (1 row): the `external` sample
    // without a partition label; PeeredServiceSNI always renders the partition.
    let t = "cluster_name_parse";
    for row in &file.cluster_name_parse {
        let td = format!("{}.consul", row.trust_domain_uuid);
        let sni = match row.cluster.split_once('~') {
            Some((hash, sni)) => {
                if hash != row.custom_hash {
                    r.fail(
                        t,
                        &row.cluster,
                        format!("custom_hash {:?}", row.custom_hash),
                    );
                }
                sni
            }
            None => row.cluster.as_str(),
        };
        if row.routing_type == "external" && row.partition.is_none() && row.peer.is_some() {
            r.not_mapped(t, "external SNI without partition label (old stats sample)");
            continue;
        }
        let built = service_sni(
            &row.service,
            &row.service_subset,
            &row.namespace,
            opt(&row.partition),
            opt(&row.datacenter),
            &td,
        );
        let target = row.target.rsplit('~').next().unwrap_or("");
        let from_target = format!("{target}.{}.{td}", row.routing_type);
        r.row(
            t,
            &row.cluster,
            &[
                ("sni", sni, &built),
                ("target + routing type", sni, &from_target),
            ],
        );
    }

    let t = "derived";
    for row in &file.derived {
        assert!(!row.from_test);
        let label = format!("{} {}", row.function, row.expected);
        let got = match row.function.as_str() {
            "GatewaySNI" => {
                gateway_sni(opt(&row.datacenter), opt(&row.partition), &row.trust_domain)
            }
            "ServiceSNI" => service_sni(
                opt(&row.service),
                opt(&row.subset),
                opt(&row.namespace),
                opt(&row.partition),
                opt(&row.datacenter),
                &row.trust_domain,
            ),
            "PeeredServiceSNI" => peered_service_sni(
                opt(&row.service),
                opt(&row.namespace),
                opt(&row.partition),
                opt(&row.peer_name),
                &row.trust_domain,
            ),
            other => {
                r.fail(t, &label, format!("unknown function {other}"));
                continue;
            }
        };
        let mut checks = vec![("sni", got.clone(), row.expected.clone())];
        // The gateway's wildcard is "*." + GatewaySNI ...
        if let Some(w) = &row.mesh_gateway_wildcard {
            checks.push(("mesh_gateway_wildcard", format!("*.{got}"), w.clone()));
        }
        // ... and a service SNI in that dc/partition ends in the wildcard's suffix.
        if let Some(w) = &row.matched_by_wildcard {
            let suffix = w.strip_prefix('*').unwrap_or("<no leading *>");
            let tail = got
                .get(got.len().saturating_sub(suffix.len())..)
                .unwrap_or("");
            checks.push((
                "matched_by_wildcard suffix",
                tail.to_owned(),
                suffix.to_owned(),
            ));
        }
        let checks: Vec<_> = checks
            .iter()
            .map(|(w, g, x)| (*w, g.as_str(), x.as_str()))
            .collect();
        r.row(t, &label, &checks);
    }

    r.finish(
        &raw,
        &[
            "service_sni",
            "upstream_sni",
            "gateway_sni",
            "datacenter_sni_historical",
            "peered_service_sni",
            "query_sni",
            "target_sni",
            "peering_server_san",
            "golden_mesh_gateway_listener",
            "golden_mesh_gateway_local_cluster",
            "golden_upstream_cluster",
            "cluster_name_parse",
            "derived",
        ],
        &[
            ("golden_mesh_gateway_listener", 3),
            ("cluster_name_parse", 1),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// spiffe_vectors.toml
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpiffeFile {
    meta: SpiffeMeta,
    parse: Vec<IdRow>,
    generate: Vec<IdRow>,
    can_sign: Vec<CanSignRow>,
    upstream_san: Vec<UpstreamSanRow>,
    docs_example: Vec<DocsExampleRow>,
}

/// The regexes in `meta` document what spiffe.rs hand-matches; not executable here (no regex
/// crate), so only the test cluster id is used.
#[derive(Deserialize)]
struct SpiffeMeta {
    test_cluster_id: String,
    test_trust_domain: String,
}

/// A `parse` or `generate` row: an ID spelled out by `kind` and its fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdRow {
    // parse rows
    name: Option<String>,
    uri: Option<String>,
    expect_error_contains: Option<String>,
    // generate rows
    test: Option<String>,
    expected: Option<String>,
    from_test: Option<bool>,
    #[allow(dead_code)]
    edition_note: Option<String>,
    // the ID
    kind: Option<String>,
    host: Option<String>,
    partition: Option<String>,
    namespace: Option<String>,
    datacenter: Option<String>,
    service: Option<String>,
    agent: Option<String>,
    cluster_id: Option<String>,
    domain: Option<String>,
    trust_domain: Option<String>,
}

impl IdRow {
    fn label(&self) -> String {
        let from_test = if self.from_test == Some(false) {
            " (derived)"
        } else {
            ""
        };
        format!(
            "{}{from_test}",
            self.name.as_deref().or(self.test.as_deref()).unwrap_or("?")
        )
    }

    /// The row's ID; `generate` rows leave out what Go leaves at its zero value.
    fn id(&self) -> Option<SpiffeId> {
        let s = |f: &Option<String>| f.clone().unwrap_or_default();
        let td = s(&self.host);
        Some(match self.kind.as_deref()? {
            "service" => SpiffeId::service(
                &td,
                opt(&self.partition),
                opt(&self.namespace),
                opt(&self.datacenter),
                opt(&self.service),
            ),
            "agent" => SpiffeId::Agent {
                trust_domain: td,
                partition: s(&self.partition),
                datacenter: s(&self.datacenter),
                agent: s(&self.agent),
            },
            "mesh_gateway" => SpiffeId::MeshGateway {
                trust_domain: td,
                partition: s(&self.partition),
                datacenter: s(&self.datacenter),
            },
            "server" => SpiffeId::Server {
                trust_domain: td,
                datacenter: s(&self.datacenter),
            },
            "signing" => match &self.domain {
                Some(domain) => SpiffeId::Signing {
                    cluster_id: s(&self.cluster_id),
                    domain: domain.clone(),
                },
                None => SpiffeId::signing_for_cluster(opt(&self.cluster_id)),
            },
            _ => return None,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanSignRow {
    name: String,
    input: String,
    want: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamSanRow {
    golden: String,
    sni: String,
    expected_san: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocsExampleRow {
    #[serde(rename = "where")]
    location: String,
    uri: String,
}

#[test]
fn spiffe_vectors() {
    let raw = read("spiffe_vectors.toml");
    let file: SpiffeFile = toml::from_str(&raw).expect("spiffe_vectors.toml deserializes");
    let mut r = Report::default();

    let t = "parse";
    for row in &file.parse {
        let label = row.label();
        let uri = opt(&row.uri);
        let got = SpiffeId::parse(uri);
        match (&row.expect_error_contains, &got) {
            (Some(needle), Err(e)) => {
                let msg = e.to_string();
                let shown = if msg.contains(needle.as_str()) {
                    needle.as_str()
                } else {
                    &msg
                };
                r.row(t, &label, &[("error mentions", shown, needle)]);
            }
            (Some(needle), Ok(id)) => {
                r.fail(
                    t,
                    &label,
                    format!("got {id:?}, want an error mentioning {needle:?}"),
                );
            }
            (None, _) => {
                let got = format!("{got:?}");
                let want = format!("{:?}", row.id().map(Ok::<_, SpiffeError>));
                let want = want.strip_prefix("Some(").and_then(|w| w.strip_suffix(')'));
                r.row(t, &label, &[("parsed", &got, want.unwrap_or("<bad kind>"))]);
            }
        }
    }

    let t = "generate";
    for row in &file.generate {
        let label = row.label();
        let want = opt(&row.expected);
        let got = match row.kind.as_deref() {
            // A DNS SAN, not a SPIFFE ID: PeeringServerSAN.
            Some("peering_server_dns_san") => {
                peering_server_san(opt(&row.datacenter), opt(&row.trust_domain))
            }
            _ => match row.id() {
                Some(id) => id.to_string(),
                None => {
                    r.fail(t, &label, format!("unknown kind {:?}", row.kind));
                    continue;
                }
            },
        };
        r.row(t, &label, &[("uri", &got, want)]);
    }

    // Signer = SpiffeIDSigningForCluster(meta.test_cluster_id). A URI that does not parse (the
    // Go test's `nil` and its fake CertURI type, here "" and a path Consul doesn't know) can
    // never be signed: CanSign's default case.
    let t = "can_sign";
    let signer = SpiffeId::signing_for_cluster(&file.meta.test_cluster_id);
    let signer_uri = format!("spiffe://{}", file.meta.test_trust_domain);
    r.row(
        t,
        "signer itself",
        &[("signer", &signer.to_string(), &signer_uri)],
    );
    for row in &file.can_sign {
        let got = SpiffeId::parse(&row.input).is_ok_and(|id| signer.can_sign(&id));
        let label = format!("{} ({})", row.name, row.input);
        r.row(
            t,
            &label,
            &[("can_sign", &got.to_string(), &row.want.to_string())],
        );
    }

    // The SAN an upstream demands = service ID of the SNI's target on the SNI's trust domain.
    let t = "upstream_san";
    for row in &file.upstream_san {
        let label = format!("{} {}", row.golden, row.sni);
        let Some((head, td)) = row.sni.split_once(".internal.") else {
            r.fail(t, &label, "not an internal SNI".into());
            continue;
        };
        let &[svc, ns, dc] = head.split('.').collect::<Vec<_>>().as_slice() else {
            r.fail(t, &label, "not <svc>.<ns>.<dc>".into());
            continue;
        };
        let san = SpiffeId::service(td, "", ns, dc, svc).to_string();
        let sni = service_sni(svc, "", ns, "", dc, td);
        r.row(
            t,
            &label,
            &[("san", &san, &row.expected_san), ("sni", &sni, &row.sni)],
        );
    }

    // Realistic service IDs: they parse as service IDs and render back unchanged.
    let t = "docs_example";
    for row in &file.docs_example {
        let got = match SpiffeId::parse(&row.uri) {
            Ok(id @ SpiffeId::Service { .. }) => id.to_string(),
            other => format!("{other:?}"),
        };
        r.row(t, &row.location, &[("round trip", &got, &row.uri)]);
    }

    // can_sign gets one extra checked row (the signer itself).
    r.finish(
        &raw,
        &[
            "parse",
            "generate",
            "can_sign",
            "upstream_san",
            "docs_example",
        ],
        &[],
    );
}
