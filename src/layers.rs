//! The top-level modules of `src/` import each other without cycles: data flows one way
//! (configuration or Consul → snapshot → plan → data path), so each module can be read, and
//! changed, knowing only the ones below it. This test reads the sources and fails with the
//! cycle when one appears.
//!
//! A module's imports are every `crate::name` it mentions (in `use` lines, `use
//! crate::{a, b::c}` groups and full paths) and every `super::…` chain that climbs to the
//! crate root, where `name` is another top-level module. Comments are skipped. `lib.rs` and
//! `main.rs` (the root and the binary) sit above everything and are not counted.
//!
//! Two more boundaries are checked the same way, by path, which clippy's `disallowed-methods`
//! cannot do: `std::thread::sleep` stays out of `src/` outside tests (a thread that pauses
//! waits on something that can end the pause: a stop request, a channel, a timer), and ureq
//! out of everything but `consul/` (the agent's client; clippy also refuses ureq's
//! constructors, allowed in `consul/client.rs` only).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Each `.rs` file under `dir`, with its module path below `src/` (`consul/api/mod.rs` →
/// `["consul", "api"]`).
fn sources(dir: &Path, prefix: &[String], out: &mut Vec<(PathBuf, Vec<String>)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if path.is_dir() {
            let mut inner = prefix.to_vec();
            inner.push(name);
            sources(&path, &inner, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let mut module = prefix.to_vec();
            if stem != "mod" {
                module.push(stem.to_owned());
            }
            out.push((path, module));
        }
    }
}

/// The text of `line` before a `//` comment (string literals holding `//` are rare enough
/// in `use` positions to ignore).
fn code(line: &str) -> &str {
    line.find("//").map_or(line, |i| &line[..i])
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first path segment of every entry of a `{a, b::c, d::{e}}` group starting at
/// `text` (just after the `{`).
fn group_heads(text: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expect_head = true,
            c if expect_head && depth == 0 && (c.is_ascii_alphabetic() || c == '_') => {
                heads.push(ident_at(&text[i..]));
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
}

/// The top-level modules `text` (a whole file of module `module`) names.
fn imports(text: &str, module: &[String]) -> BTreeSet<String> {
    // Joined so that a `use crate::{` group spanning lines is read whole.
    let joined: String = text.lines().map(code).collect::<Vec<_>>().join("\n");
    let mut found = BTreeSet::new();
    let mut rest = joined.as_str();
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        let after = &rest[i + "crate::".len()..];
        rest = after;
        // `$crate::` in a macro body means the crate the macro is used from; a longer
        // identifier ending in `crate` is something else.
        if before.is_some_and(|c| c == '$' || c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            found.extend(group_heads(group).into_iter().map(str::to_owned));
        } else {
            found.insert(ident_at(after).to_owned());
        }
    }
    // `super::super::x` from a file `depth` modules deep reaches the root at `depth` supers;
    // inline modules (`mod tests`) only make a chain reach less far, so this may report an
    // import that is not there, never miss one.
    let depth = module.len();
    let mut rest = joined.as_str();
    while let Some(i) = rest.find("super::") {
        let mut chain = &rest[i..];
        let mut supers = 0;
        while let Some(next) = chain.strip_prefix("super::") {
            supers += 1;
            chain = next;
        }
        rest = chain;
        if depth > 0 && supers >= depth {
            if let Some(group) = chain.strip_prefix('{') {
                found.extend(group_heads(group).into_iter().map(str::to_owned));
            } else {
                found.insert(ident_at(chain).to_owned());
            }
        }
    }
    found
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    sources(src, &[], &mut files);
    let tops: BTreeSet<String> = files
        .iter()
        .filter_map(|(_, m)| m.first().cloned())
        .filter(|m| !matches!(m.as_str(), "lib" | "main" | "layers"))
        .collect();
    let mut graph = Graph::new();
    for (path, module) in &files {
        let Some(top) = module.first().filter(|t| tops.contains(*t)) else {
            continue;
        };
        let text = fs::read_to_string(path).unwrap();
        let uses = graph.entry(top.clone()).or_default();
        for name in imports(&text, module) {
            if tops.contains(&name) && &name != top {
                uses.insert(name);
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the modules along it (the first repeated at the end).
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

/// Files that still sleep outside tests, to be moved to a wake-able wait.
const SLEEPING: &[&str] = &["proxy/mod.rs"];

/// `text` without its tests: the `#[cfg(test)]` module at the end of the file (a file
/// included only as a test module is all test).
fn non_test(path: &Path, text: &str) -> String {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name == "tests.rs" || name.ends_with("_tests.rs") {
        return String::new();
    }
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..end].lines().map(code).collect::<Vec<_>>().join("\n")
}

#[test]
fn src_neither_sleeps_nor_speaks_http_outside_its_place() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &[], &mut files);
    let mut offences = Vec::new();
    let mut still_sleeping = BTreeSet::new();
    for (path, module) in &files {
        let text = non_test(path, &fs::read_to_string(path).unwrap());
        let shown = path
            .strip_prefix(&src)
            .unwrap_or(path)
            .display()
            .to_string();
        if text.contains("thread::sleep") {
            if SLEEPING.contains(&shown.as_str()) {
                still_sleeping.insert(shown.clone());
            } else {
                offences.push(format!("{shown}: std::thread::sleep"));
            }
        }
        let in_consul = module.first().is_some_and(|m| m == "consul");
        if !in_consul && module.first().is_some_and(|m| m != "layers") && text.contains("ureq") {
            offences.push(format!("{shown}: ureq outside consul/"));
        }
    }
    assert!(offences.is_empty(), "{offences:#?}");
    for file in SLEEPING {
        assert!(
            still_sleeping.contains(*file),
            "{file} no longer sleeps: delete it from SLEEPING"
        );
    }
}

#[test]
fn the_checker_reads_every_import_form() {
    let module = vec!["consul".to_owned(), "api".to_owned(), "health".to_owned()];
    let text = "use crate::mesh::Place;\n\
                use crate::{config::{self, Config}, log};\n\
                use super::super::super::tls;\n\
                use super::super::example; // crate::proxy in a comment\n\
                let x = crate::metrics::Metrics::default();\n\
                $crate::notify::x();\n";
    let found: Vec<String> = imports(text, &module).into_iter().collect();
    assert_eq!(found, ["config", "log", "mesh", "metrics", "tls"]);

    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycle(&g).unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    assert!(graph.len() > 5, "found only {graph:?} in {}", src.display());
    if let Some(found) = cycle(&graph) {
        let edges: Vec<String> = graph
            .iter()
            .map(|(m, uses)| {
                format!(
                    "  {m} → {}",
                    uses.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        panic!(
            "import cycle between top-level modules: {}\n{}",
            found.join(" → "),
            edges.join("\n")
        );
    }
}
