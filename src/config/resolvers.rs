//! `[config_entries.service_resolvers.<name>]`: Consul's `service-resolver` entry, with its
//! keys in snake_case, every problem reported at its key path.

use std::collections::BTreeMap;
use std::time::Duration;

use super::fields::Fields;
use super::sections::name_ok;
use crate::mesh::chain::filter::Filter;
use crate::mesh::chain::{Failover, Resolver, Subset, TargetOpts};

/// One entry. `key` is its table key (the name when `name` is absent); `namespace` and
/// `partition` default to this host's.
pub fn resolver(r: &Fields<'_>, key: &str, namespace: &str, partition: &str) -> Option<Resolver> {
    let mut ok = true;
    let (name, namespace, partition) = super::sidecar::entry_place(r, key, namespace, partition)?;
    let subsets = subsets(r, &mut ok);
    let default_subset = default_subset(r, &subsets, &mut ok);
    let redirect = redirect(r, &mut ok);
    let failover = failovers(r, &subsets, &mut ok);
    if redirect.is_some() && !subsets.is_empty() {
        r.error(
            "redirect",
            "cannot be set with subsets (Consul refuses it too)",
        );
        ok = false;
    }
    if redirect.is_some() && !failover.is_empty() {
        r.error(
            "redirect",
            "cannot be set with failover (Consul refuses it too)",
        );
        ok = false;
    }
    let connect_timeout = connect_timeout(r, &mut ok);
    for l7 in ["request_timeout", "load_balancer"] {
        if r.has(l7) {
            r.str(l7);
            r.table(l7);
            r.warn(l7, "is an L7 setting and is ignored: sidegate carries TCP");
        }
    }
    r.finish();
    ok.then_some(Resolver {
        name,
        namespace,
        partition,
        default_subset,
        subsets,
        redirect,
        failover,
        connect_timeout,
    })
}

/// `subsets`: each name a DNS label, each table a subset. Clears `ok` on any problem.
fn subsets(r: &Fields<'_>, ok: &mut bool) -> BTreeMap<String, Subset> {
    let Some(all) = r.table("subsets") else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for (subset_name, s) in all.each_table() {
        if !crate::names::is_label(&subset_name) || subset_name.contains('_') {
            // A subset name becomes the first SNI label, which Consul requires to be
            // a DNS label (letters, digits, '-').
            all.error(
                &subset_name,
                "is not a valid subset name (1 to 63 letters, digits or '-')",
            );
            *ok = false;
        }
        match subset(&s) {
            Some(v) => {
                out.insert(subset_name, v);
            }
            None => *ok = false,
        }
    }
    all.finish();
    out
}

/// `default_subset`: empty when absent, else one of `subsets`.
fn default_subset(r: &Fields<'_>, subsets: &BTreeMap<String, Subset>, ok: &mut bool) -> String {
    let default_subset = r.str("default_subset").unwrap_or_default().to_owned();
    if !default_subset.is_empty() && !subsets.contains_key(&default_subset) {
        r.error(
            "default_subset",
            format!("{default_subset:?} is not one of this entry's subsets"),
        );
        *ok = false;
    }
    default_subset
}

/// `redirect`: a target that names at least one thing.
fn redirect(r: &Fields<'_>, ok: &mut bool) -> Option<TargetOpts> {
    let t = r.table("redirect")?;
    let opts = target_opts(&t, true);
    t.finish();
    match opts {
        Some(o) if o == TargetOpts::default() => {
            t.error_here(
                "is empty: name a service, service_subset, namespace, partition or datacenter",
            );
            *ok = false;
            None
        }
        Some(o) => Some(o),
        None => {
            *ok = false;
            None
        }
    }
}

/// `failover`: keyed by `"*"` or one of `subsets`.
fn failovers(
    r: &Fields<'_>,
    subsets: &BTreeMap<String, Subset>,
    ok: &mut bool,
) -> BTreeMap<String, Failover> {
    let Some(all) = r.table("failover") else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for (which, f) in all.each_table() {
        if which != "*" && !subsets.contains_key(&which) {
            all.error(&which, "is neither \"*\" nor one of this entry's subsets");
            *ok = false;
        }
        match failover(&f) {
            Some(v) => {
                out.insert(which, v);
            }
            None => *ok = false,
        }
    }
    all.finish();
    out
}

/// `connect_timeout`: a Go duration above zero.
fn connect_timeout(r: &Fields<'_>, ok: &mut bool) -> Option<Duration> {
    let text = r.str("connect_timeout")?;
    match go_duration(text) {
        Some(d) if d > Duration::ZERO => Some(d),
        Some(_) => {
            r.error("connect_timeout", "must be more than zero");
            *ok = false;
            None
        }
        None => {
            r.error(
                "connect_timeout",
                format!("{text:?} is not a duration like \"5s\", \"500ms\" or \"1m30s\""),
            );
            *ok = false;
            None
        }
    }
}

fn subset(s: &Fields<'_>) -> Option<Subset> {
    let filter = match s.str("filter") {
        Some("") | None => Some(None),
        Some(text) => match Filter::parse(text) {
            Ok(f) => Some(Some(f)),
            Err(e) => {
                s.error("filter", format!("{text:?}: {e}"));
                None
            }
        },
    };
    let only_passing = s.bool("only_passing").unwrap_or(false);
    s.finish();
    Some(Subset {
        filter: filter?,
        only_passing,
    })
}

/// `service`, `service_subset`, `namespace`, and with `place` also `partition` and
/// `datacenter`: each a name, empty when absent.
fn target_opts(t: &Fields<'_>, place: bool) -> Option<TargetOpts> {
    let mut ok = true;
    let mut name = |key: &'static str| {
        let v = t.str(key).unwrap_or_default();
        if !v.is_empty() && !name_ok(t, key, v) {
            ok = false;
        }
        v.to_owned()
    };
    let opts = TargetOpts {
        service: name("service"),
        service_subset: name("service_subset"),
        namespace: name("namespace"),
        partition: if place {
            name("partition")
        } else {
            String::new()
        },
        datacenter: if place {
            name("datacenter")
        } else {
            String::new()
        },
    };
    ok.then_some(opts)
}

fn failover(f: &Fields<'_>) -> Option<Failover> {
    let opts = target_opts(f, false);
    let mut ok = opts.is_some();
    let datacenters: Vec<String> = f
        .str_list("datacenters")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(path, dc)| {
            let valid = crate::names::is_label(dc);
            if !valid {
                f.error_at(&path, format!("{dc:?} is not a valid datacenter name"));
                ok = false;
            }
            valid.then(|| dc.to_owned())
        })
        .collect();
    let targets: Vec<TargetOpts> = f
        .tables("targets")
        .iter()
        .filter_map(|t| {
            let o = target_opts(t, true);
            t.finish();
            if o.as_ref().is_some_and(|o| *o == TargetOpts::default()) {
                t.error_here(
                    "is empty: name a service, service_subset, namespace, partition or datacenter",
                );
                ok = false;
            }
            if o.is_none() {
                ok = false;
            }
            o
        })
        .collect();
    if !targets.is_empty() {
        let mixed = ["service", "service_subset", "namespace", "datacenters"]
            .into_iter()
            .find(|k| f.has(k));
        if let Some(k) = mixed {
            f.error(
                "targets",
                format!("cannot be set with `{k}`: put it in each target"),
            );
            ok = false;
        }
    }
    let opts = opts?;
    if ok && opts == TargetOpts::default() && datacenters.is_empty() && targets.is_empty() {
        f.error_here("names nothing to fail over to: set service, service_subset, namespace, datacenters or targets");
        ok = false;
    }
    f.finish();
    ok.then_some(Failover {
        opts,
        datacenters,
        targets,
    })
}

/// Go's `time.ParseDuration` syntax, as Consul reads `ConnectTimeout`: a sequence of
/// decimal numbers, each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`); `0` alone.
pub fn go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    (total.is_finite() && total <= 86_400.0 * 365.0).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_durations() {
        let ok = [
            ("5s", 5_000),
            ("500ms", 500),
            ("1m30s", 90_000),
            ("1.5s", 1_500),
            ("2h", 7_200_000),
            ("0", 0),
        ];
        for (text, ms) in ok {
            assert_eq!(go_duration(text), Some(Duration::from_millis(ms)), "{text}");
        }
        for bad in ["", "5", "s", "5 s", "-1s", "5x", "1..5s"] {
            assert_eq!(go_duration(bad), None, "{bad}");
        }
    }
}
