//! `GET /v1/config/service-resolver`: every `service-resolver` entry of a partition, as a
//! gateway needs them — each service's subsets and default subset, which decide the names it
//! routes and the instances behind each. Redirects and failover act on the calling sidecar's
//! chain, which Consul compiles for it, so the gateway does not keep them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::nullable;
use crate::mesh::chain::filter::Filter;
use crate::mesh::chain::{Resolver, Resolvers, Subset};
use crate::mesh::config_entries::target_key;
use crate::names::is_label;

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ResolverEntry {
    pub name: String,
    /// Enterprise only; absent means `default`.
    pub namespace: String,
    pub partition: String,
    pub default_subset: String,
    #[serde(deserialize_with = "nullable")]
    pub subsets: BTreeMap<String, SubsetEntry>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct SubsetEntry {
    pub filter: String,
    pub only_passing: bool,
}

/// The list body (`null` when there are none).
pub fn entries(body: &str) -> Result<Vec<ResolverEntry>, serde_json::Error> {
    nullable(&mut serde_json::Deserializer::from_str(body))
}

/// The entries as the plan's resolvers. A subset whose filter sidegate cannot evaluate, or
/// whose name cannot be an SNI label, selects no instance (with a warning naming the entry):
/// Consul accepted it, so serving every instance under its name would be a silent mis-route,
/// while refusing them is what a wrong filter does in Consul too.
pub fn resolvers(entries: &[ResolverEntry], warnings: &mut Vec<String>) -> Resolvers {
    let mut out = Resolvers::new();
    for e in entries {
        let mut subsets = BTreeMap::new();
        for (name, s) in &e.subsets {
            let filter = if s.filter.trim().is_empty() {
                None
            } else {
                match Filter::parse(&s.filter) {
                    Ok(f) => Some(f),
                    Err(why) => {
                        warnings.push(format!(
                            "service-resolver {:?}: subset {name:?}: filter {:?} {why}: the subset selects no instance",
                            e.name, s.filter
                        ));
                        Some(Filter::nothing(&s.filter))
                    }
                }
            };
            if !is_label(name) || name.contains('_') {
                warnings.push(format!(
                    "service-resolver {:?}: subset {name:?} is not a DNS label and gets no route",
                    e.name
                ));
                continue;
            }
            subsets.insert(
                name.clone(),
                Subset {
                    filter,
                    only_passing: s.only_passing,
                },
            );
        }
        let resolver = Resolver {
            name: e.name.clone(),
            namespace: e.namespace.clone(),
            partition: e.partition.clone(),
            default_subset: e.default_subset.clone(),
            subsets,
            ..Resolver::default()
        };
        out.insert(target_key(&e.name, &e.namespace, &e.partition), resolver);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::snapshot::Instance;

    /// As Consul 1.8.7 lists them (Community Edition: no namespace or partition keys).
    const BODY: &str = r#"[
      {"Kind":"service-resolver","Name":"db","DefaultSubset":"v1",
       "Subsets":{"v1":{"Filter":"Service.Meta.version == v1"},
                  "v2":{"Filter":"v2 in Service.Tags","OnlyPassing":true},
                  "re":{"Filter":"Service.Meta.version matches \"v.*\""}},
       "Failover":{"*":{"Datacenters":["dc2"]}},"ConnectTimeout":"15s",
       "CreateIndex":12,"ModifyIndex":12},
      {"Kind":"service-resolver","Name":"api","Subsets":null,"CreateIndex":13,"ModifyIndex":13}
    ]"#;

    #[test]
    fn entries_become_resolvers_and_unsupported_filters_select_nothing() {
        let list = entries(BODY).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].subsets["v2"].only_passing);
        assert!(list[1].subsets.is_empty());
        let mut warnings = Vec::new();
        let r = resolvers(&list, &mut warnings);
        let db = &r[&target_key("db", "", "")];
        assert_eq!(db.default_subset, "v1");
        assert_eq!(db.subsets.len(), 3);
        let mut v2 = Instance::at("10.0.0.1:1".parse().unwrap());
        v2.tags = vec!["v2".into()];
        v2.meta.insert("version".into(), "v2".into());
        assert!(db.subsets["v2"].admits("db", &v2));
        assert!(!db.subsets["v1"].admits("db", &v2));
        // `matches` is not evaluated here: the subset is kept (its name is refused as no
        // unknown subset) but selects nothing, with a warning naming the entry.
        assert!(!db.subsets["re"].admits("db", &v2));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("\"db\"") && warnings[0].contains("\"re\""));
        assert!(r.contains_key(&target_key("api", "default", "default")));
        assert!(entries("null").unwrap().is_empty());
        assert!(entries("{}").is_err());
    }
}
