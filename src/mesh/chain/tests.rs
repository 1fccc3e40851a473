//! The compiler, table-driven: each case is a set of resolvers, an upstream, and the
//! targets Consul's compiler gives for them in order.

use std::time::Duration;

use super::*;

fn t(service: &str, subset: &str, namespace: &str, partition: &str, dc: &str) -> Target {
    Target {
        service: service.into(),
        subset: subset.into(),
        namespace: namespace.into(),
        partition: partition.into(),
        datacenter: dc.into(),
    }
}

fn db() -> Target {
    t("db", "", "default", "default", "dc1")
}

fn subsets(names: &[&str]) -> BTreeMap<String, Subset> {
    names
        .iter()
        .map(|n| ((*n).to_owned(), Subset::default()))
        .collect()
}

fn resolver(name: &str, f: impl FnOnce(&mut Resolver)) -> Resolver {
    let mut r = Resolver {
        name: name.into(),
        namespace: "default".into(),
        partition: "default".into(),
        ..Resolver::default()
    };
    f(&mut r);
    r
}

fn set(list: Vec<Resolver>) -> Resolvers {
    list.into_iter()
        .map(|r| (target_key(&r.name, &r.namespace, &r.partition), r))
        .collect()
}

fn to(service: &str, subset: &str, namespace: &str, partition: &str, dc: &str) -> TargetOpts {
    TargetOpts {
        service: service.into(),
        service_subset: subset.into(),
        namespace: namespace.into(),
        partition: partition.into(),
        datacenter: dc.into(),
    }
}

fn failover(f: impl FnOnce(&mut Failover)) -> Failover {
    let mut out = Failover::default();
    f(&mut out);
    out
}

/// One case: what it shows, the resolvers, and the targets `db` compiles to, in order.
type Case = (&'static str, Vec<Resolver>, Vec<Target>);

/// Compiles `db` against each case's resolvers and checks its targets.
fn compiles_each(cases: Vec<Case>) {
    for (what, resolvers, want) in cases {
        let chain = compile(&set(resolvers), db(), None).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(chain.targets, want, "{what}");
    }
}

/// With no redirect or failover: the service, or the default subset its resolver names.
#[test]
fn compiles_the_service_itself_or_its_default_subset() {
    compiles_each(vec![
        ("no resolver: the service itself", vec![], vec![db()]),
        (
            "default subset",
            vec![resolver("db", |r| {
                r.subsets = subsets(&["v1", "v2"]);
                r.default_subset = "v1".into();
            })],
            vec![t("db", "v1", "default", "default", "dc1")],
        ),
    ]);
}

/// A redirect replaces the target, then the new target's resolver applies.
#[test]
fn compiles_redirects() {
    compiles_each(vec![
        (
            "redirect to another service drops nothing it did not have",
            vec![resolver("db", |r| {
                r.redirect = Some(to("db2", "", "", "", ""))
            })],
            vec![t("db2", "", "default", "default", "dc1")],
        ),
        (
            "redirect then the target's default subset",
            vec![
                resolver("db", |r| r.redirect = Some(to("db2", "", "", "", ""))),
                resolver("db2", |r| {
                    r.subsets = subsets(&["blue"]);
                    r.default_subset = "blue".into();
                }),
            ],
            vec![t("db2", "blue", "default", "default", "dc1")],
        ),
        (
            "redirect to a subset of another service",
            vec![
                resolver("db", |r| r.redirect = Some(to("db2", "green", "", "", ""))),
                resolver("db2", |r| {
                    r.subsets = subsets(&["blue", "green"]);
                    r.default_subset = "blue".into();
                }),
            ],
            vec![t("db2", "green", "default", "default", "dc1")],
        ),
        (
            "redirect to another namespace, partition and datacenter",
            vec![resolver("db", |r| {
                r.redirect = Some(to("", "", "ns2", "part2", "dc3"))
            })],
            vec![t("db", "", "ns2", "part2", "dc3")],
        ),
        (
            "redirect chain",
            vec![
                resolver("db", |r| r.redirect = Some(to("db2", "", "", "", ""))),
                resolver("db2", |r| r.redirect = Some(to("db3", "", "", "", "dc2"))),
            ],
            vec![t("db3", "", "default", "default", "dc2")],
        ),
    ]);
}

/// Failover by datacenters: the primary, then each other datacenter in order.
#[test]
fn compiles_failover_datacenters() {
    compiles_each(vec![
        (
            "failover datacenters in order",
            vec![resolver("db", |r| {
                r.failover = [(
                    "*".to_owned(),
                    failover(|f| f.datacenters = vec!["dc2".into(), "dc3".into()]),
                )]
                .into();
            })],
            vec![
                db(),
                t("db", "", "default", "default", "dc2"),
                t("db", "", "default", "default", "dc3"),
            ],
        ),
        (
            "failover to its own datacenter is skipped",
            vec![resolver("db", |r| {
                r.failover = [(
                    "*".to_owned(),
                    failover(|f| f.datacenters = vec!["dc1".into(), "dc2".into()]),
                )]
                .into();
            })],
            vec![db(), t("db", "", "default", "default", "dc2")],
        ),
        (
            "failover with service and datacenters",
            vec![resolver("db", |r| {
                r.failover = [(
                    "*".to_owned(),
                    failover(|f| {
                        f.opts.service = "db-ro".into();
                        f.datacenters = vec!["dc2".into()];
                    }),
                )]
                .into();
            })],
            vec![db(), t("db-ro", "", "default", "default", "dc2")],
        ),
    ]);
}

/// Failover of a subset: to another subset, or by the subset's own entry before `*`.
#[test]
fn compiles_failover_between_subsets() {
    compiles_each(vec![
        (
            "failover of the default subset to another subset",
            vec![resolver("db", |r| {
                r.subsets = subsets(&["v1", "v2"]);
                r.default_subset = "v1".into();
                r.failover = [(
                    "v1".to_owned(),
                    failover(|f| f.opts.service_subset = "v2".into()),
                )]
                .into();
            })],
            vec![
                t("db", "v1", "default", "default", "dc1"),
                t("db", "v2", "default", "default", "dc1"),
            ],
        ),
        (
            "a subset's own failover beats `*`",
            vec![resolver("db", |r| {
                r.subsets = subsets(&["v1", "v2"]);
                r.default_subset = "v1".into();
                r.failover = [
                    (
                        "v1".to_owned(),
                        failover(|f| f.datacenters = vec!["dc2".into()]),
                    ),
                    (
                        "*".to_owned(),
                        failover(|f| f.datacenters = vec!["dc3".into()]),
                    ),
                ]
                .into();
            })],
            vec![
                t("db", "v1", "default", "default", "dc1"),
                t("db", "v1", "default", "default", "dc2"),
            ],
        ),
    ]);
}

/// Failover to other services and places: each target rewritten from the primary, under its own resolver.
#[test]
fn compiles_failover_targets() {
    compiles_each(vec![
        (
            "failover targets, each rewritten from the primary; another service drops the subset",
            vec![resolver("db", |r| {
                r.subsets = subsets(&["v1"]);
                r.default_subset = "v1".into();
                r.failover = [(
                    "*".to_owned(),
                    failover(|f| {
                        f.targets = vec![
                            to("", "", "", "", "dc2"),
                            to("db-backup", "", "ops", "", ""),
                        ]
                    }),
                )]
                .into();
            })],
            vec![
                t("db", "v1", "default", "default", "dc1"),
                t("db", "v1", "default", "default", "dc2"),
                t("db-backup", "", "ops", "default", "dc1"),
            ],
        ),
        (
            "a failover target's own resolver applies (its default subset), its failover does not",
            vec![
                resolver("db", |r| {
                    r.failover = [(
                        "*".to_owned(),
                        failover(|f| f.opts.service = "db-backup".into()),
                    )]
                    .into();
                }),
                resolver("db-backup", |r| {
                    r.subsets = subsets(&["hot"]);
                    r.default_subset = "hot".into();
                    r.failover = [(
                        "*".to_owned(),
                        failover(|f| f.datacenters = vec!["dc9".into()]),
                    )]
                    .into();
                }),
            ],
            vec![db(), t("db-backup", "hot", "default", "default", "dc1")],
        ),
    ]);
}

/// Which resolver applies: the one of the target's place, its name matched without case.
#[test]
fn compiles_with_the_resolver_of_the_targets_place_and_name() {
    compiles_each(vec![
        (
            "a resolver in another partition does not apply here",
            vec![Resolver {
                partition: "part2".into(),
                ..resolver("db", |r| r.redirect = Some(to("db2", "", "", "", "")))
            }],
            vec![db()],
        ),
        (
            "names are compared without regard to case",
            vec![resolver("DB", |r| {
                r.redirect = Some(to("db2", "", "", "", ""))
            })],
            vec![t("db2", "", "default", "default", "dc1")],
        ),
    ]);
}

#[test]
fn refuses_loops_and_undefined_subsets() {
    let looped = set(vec![
        resolver("db", |r| r.redirect = Some(to("db2", "", "", "", ""))),
        resolver("db2", |r| r.redirect = Some(to("db", "", "", "", ""))),
    ]);
    assert!(matches!(
        compile(&looped, db(), None),
        Err(ChainError::RedirectLoop(order)) if order.len() == 3
    ));
    let missing = set(vec![
        resolver("db", |r| r.redirect = Some(to("db2", "v9", "", "", ""))),
        resolver("db2", |r| r.subsets = subsets(&["v1"])),
    ]);
    assert_eq!(
        compile(&missing, db(), None),
        Err(ChainError::NoSuchSubset {
            service: "db2".into(),
            subset: "v9".into()
        })
    );
    // A subset on a service without a resolver is undefined too, also when a failover
    // carries the primary's subset into a partition whose db defines none (as in Consul).
    let carried = set(vec![resolver("db", |r| {
        r.subsets = subsets(&["v1"]);
        r.default_subset = "v1".into();
        r.failover = [(
            "*".to_owned(),
            failover(|f| f.targets = vec![to("", "", "", "part2", "")]),
        )]
        .into();
    })]);
    assert!(matches!(
        compile(&carried, db(), None),
        Err(ChainError::NoSuchSubset { .. })
    ));
    let bare = set(vec![resolver("db", |r| {
        r.redirect = Some(to("db3", "v1", "", "", ""))
    })]);
    assert!(matches!(
        compile(&bare, db(), None),
        Err(ChainError::NoSuchSubset { .. })
    ));
}

#[test]
fn connect_timeout_is_the_resolvers_unless_the_upstream_sets_one() {
    let with = set(vec![resolver("db", |r| {
        r.connect_timeout = Some(Duration::from_secs(3))
    })]);
    let cases = [
        (Resolvers::new(), None, DEFAULT_CONNECT_TIMEOUT),
        (with.clone(), None, Duration::from_secs(3)),
        (
            with,
            Some(Duration::from_millis(750)),
            Duration::from_millis(750),
        ),
    ];
    for (resolvers, upstream, want) in cases {
        let chain = compile(&resolvers, db(), upstream).unwrap();
        assert_eq!(chain.connect_timeout, want, "{upstream:?}");
    }
}

#[test]
fn subsets_admit_by_filter_and_health() {
    use crate::mesh::snapshot::Instance;
    let mut v1 = Instance::at("10.0.0.1:1".parse().unwrap());
    v1.meta.insert("version".into(), "v1".into());
    let mut v1_warning = v1.clone();
    v1_warning.health = Health::Warning;
    let mut v1_critical = v1.clone();
    v1_critical.health = Health::Critical;
    let v1_only = Subset {
        filter: Some(Filter::parse("Service.Meta.version == v1").unwrap()),
        only_passing: false,
    };
    let passing = Subset {
        only_passing: true,
        ..v1_only.clone()
    };
    let plain = Instance::at("10.0.0.2:1".parse().unwrap());
    let cases = [
        (&v1_only, &v1, true),
        (&v1_only, &v1_warning, true),
        (&v1_only, &v1_critical, false),
        (&passing, &v1_warning, false),
        (&passing, &v1, true),
        (&v1_only, &plain, false),
        (&Subset::default(), &plain, true),
        (&Subset::default(), &v1_critical, false),
    ];
    for (i, (subset, instance, want)) in cases.into_iter().enumerate() {
        assert_eq!(subset.admits("db", instance), want, "case {i}");
    }
}
