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
//!
//! And one habit: no function outside tests returns `Result<_, String>` (nor hides one behind
//! a type alias or a trait's `type Err = String`). An error a caller can only print cannot be
//! told apart from another; each gets a type, with a `Display` for the text.
//!
//! "Outside tests" means without every item under `#[cfg(test)]`, wherever it sits in a file,
//! read with comments and literals blanked so that a brace in a string does not end an item.

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

/// The code of `text` outside its tests, blanked (see `blank`), without every item under
/// `#[cfg(test)]` wherever it sits: a test module, and a test-only helper above code that
/// ships (a file included only as a test module is all test).
fn non_test(path: &Path, text: &str) -> String {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name == "tests.rs" || name.ends_with("_tests.rs") {
        return String::new();
    }
    without_test_items(&blank(text))
}

/// `text` with its comments and the insides of its string and character literals turned
/// to spaces (line breaks kept), so that braces, `fn` and names in what remains are code.
fn blank(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let keep_lines = |out: &mut String, from: &[char]| {
        out.extend(from.iter().map(|&x| if x == '\n' { x } else { ' ' }));
    };
    let mut i = 0;
    while i < c.len() {
        let rest = &c[i..];
        // The length of the comment or literal starting here, if one does.
        let skip = match rest {
            ['/', '/', ..] => rest.iter().position(|&x| x == '\n').unwrap_or(rest.len()),
            ['/', '*', ..] => block_comment(rest),
            ['"', ..] => quoted(rest, 0),
            ['\'', '\\', ..] => rest[2..]
                .iter()
                .position(|&x| x == '\'')
                .map_or(1, |e| e + 3),
            ['\'', _, '\'', ..] => 3,
            [x, ..] if x.is_alphabetic() || *x == '_' => {
                let word = rest
                    .iter()
                    .take_while(|x| x.is_alphanumeric() || **x == '_');
                let n = word.count();
                out.extend(&rest[..n]);
                i += n;
                if matches!(&rest[..n], ['r'] | ['b', 'r']) && matches!(c.get(i), Some('#' | '"')) {
                    let hashes = c[i..].iter().take_while(|&&x| x == '#').count();
                    let n = quoted(&c[i + hashes..], hashes) + hashes;
                    keep_lines(&mut out, &c[i..i + n]);
                    i += n;
                }
                continue;
            }
            _ => 0,
        };
        if skip == 0 {
            out.push(c[i]);
            i += 1;
        } else {
            keep_lines(&mut out, &rest[..skip]);
            i += skip;
        }
    }
    out
}

/// The length of the (nesting) block comment `c` starts with.
fn block_comment(c: &[char]) -> usize {
    let (mut depth, mut i) = (0, 0);
    while i + 1 < c.len() {
        match (c[i], c[i + 1]) {
            ('/', '*') => (depth, i) = (depth + 1, i + 2),
            ('*', '/') if depth == 1 => return i + 2,
            ('*', '/') => (depth, i) = (depth - 1, i + 2),
            _ => i += 1,
        }
    }
    c.len()
}

/// The length of the string literal `c` starts with (at its `"`), closed by a `"` and
/// `hashes` `#`s; escapes count only in a plain string.
fn quoted(c: &[char], hashes: usize) -> usize {
    let mut i = 1;
    while i < c.len() {
        match c[i] {
            '\\' if hashes == 0 => i += 2,
            '"' if c[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&x| x == '#')
                .count()
                == hashes =>
            {
                return i + 1 + hashes;
            }
            _ => i += 1,
        }
    }
    c.len()
}

/// `code` (blanked) without the items under each `#[cfg(test)]`: an item ends at its `;`
/// or at the `}` that closes its first `{`.
fn without_test_items(code: &str) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find(ATTR) {
        out.push_str(&rest[..at]);
        let item = &rest[at + ATTR.len()..];
        let mut depth = 0;
        let end = item
            .char_indices()
            .find_map(|(i, c)| {
                match c {
                    ';' if depth == 0 => return Some(i + 1),
                    '{' => depth += 1,
                    '}' if depth == 1 => return Some(i + 1),
                    '}' => depth -= 1,
                    _ => {}
                }
                None
            })
            .unwrap_or(item.len());
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The functions declared in `code` (blanked, without tests) that return a
/// `Result<_, String>`, somewhere in their return type, and the type aliases that name one
/// (`type Parsed = Result<u16, String>`, or a trait's `type Err = String`).
fn string_errors(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (keyword, rest) in words(code, &["fn", "type"]) {
        let name = ident_at(rest.trim_start());
        let Some(end) = rest.find(if keyword == "fn" {
            ['{', ';']
        } else {
            [';', ';']
        }) else {
            continue;
        };
        let head = &rest[..end];
        let returned = if keyword == "fn" {
            return_type(head)
        } else {
            head.split_once('=').map(|(_, ty)| ty)
        };
        let ty: String = returned.unwrap_or_default().split_whitespace().collect();
        let aliased_error = keyword == "type" && matches!(name, "Err" | "Error");
        if holds_string_result(&ty) || (aliased_error && is_string(&ty)) {
            found.push(format!("{keyword} {name}"));
        }
    }
    found
}

/// What follows each of `keywords` where it stands as a word in `code`.
fn words<'a>(code: &'a str, keywords: &'a [&'a str]) -> impl Iterator<Item = (&'a str, &'a str)> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    code.char_indices()
        .filter(move |&(i, _)| !code[..i].ends_with(is_ident))
        .filter_map(move |(i, _)| {
            let word = keywords.iter().find(|k| code[i..].starts_with(**k))?;
            let rest = &code[i + word.len()..];
            rest.starts_with(char::is_whitespace)
                .then_some((*word, rest))
        })
}

/// The return type of a function signature (from its name to its body), before any
/// `where`: what follows the `->` outside its parameters and generics.
fn return_type(signature: &str) -> Option<&str> {
    let (mut parens, mut angles) = (0i32, 0i32);
    for (i, c) in signature.char_indices() {
        match c {
            '-' if signature[i..].starts_with("->") && parens == 0 && angles == 0 => {
                let ty = &signature[i + 2..];
                let end = ty.find(" where").or_else(|| ty.find("\nwhere"));
                return Some(end.map_or(ty, |e| &ty[..e]));
            }
            '(' => parens += 1,
            ')' => parens -= 1,
            '<' => angles += 1,
            '>' if !signature[..i].ends_with('-') => angles -= 1,
            _ => {}
        }
    }
    None
}

fn is_string(ty: &str) -> bool {
    matches!(
        ty,
        "String" | "std::string::String" | "alloc::string::String"
    )
}

/// Whether `ty` (without spaces) holds a `Result<_, String>` anywhere.
fn holds_string_result(ty: &str) -> bool {
    ty.match_indices("Result<").any(|(at, m)| {
        let starts_word = !ty[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        starts_word && matches!(generic_args(&ty[at + m.len()..])[..], [_, last] if is_string(last))
    })
}

/// The arguments of the generic list `text` starts just inside of (a trailing comma, as
/// rustfmt writes a list over several lines, adds none).
fn generic_args(text: &str) -> Vec<&str> {
    let (mut depth, mut start) = (0, 0);
    let mut args = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' if text[..i].ends_with('-') => {}
            '>' | ')' | ']' if depth == 0 => {
                args.push(&text[start..i]);
                break;
            }
            '>' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                args.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if args.last().is_some_and(|a| a.is_empty()) {
        args.pop();
    }
    args
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
fn src_returns_typed_errors_not_strings() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &[], &mut files);
    let mut offences = Vec::new();
    let mut functions = 0;
    for (path, _) in &files {
        let text = non_test(path, &fs::read_to_string(path).unwrap());
        functions += words(&text, &["fn"]).count();
        let shown = path.strip_prefix(&src).unwrap_or(path).display();
        offences.extend(
            string_errors(&text)
                .into_iter()
                .map(|item| format!("{shown}: {item}")),
        );
    }
    // A scan that reads nothing passes too: it must have seen the crate's functions.
    assert!(functions > 500, "read only {functions} functions");
    assert!(
        offences.is_empty(),
        "return an error type with a Display, not a String: {offences:#?}"
    );
}

#[test]
fn the_string_error_scan_sees_through_layout_and_past_tests() {
    let text = r##"
        /// fn documented() -> Result<(), String> { in a comment }
        const URL: &str = "http://host/{"; // an unbalanced brace in a string
        const RAW: &str = r#"fn quoted() -> Result<(), String> {"#;
        const BRACE: char = '{';
        #[cfg(test)]
        fn helper() -> Result<u8, String> { Ok(b'}') }
        pub(crate) fn shipped<'a, F: Fn(u8) -> u8>(
            input: &'a str,
        ) -> Result<
            Vec<(u8, Option<Box<dyn Fn() -> u8>>)>,
            std::string::String,
        >
        where
            F: Copy,
        {
            todo!()
        }
        fn nested() -> Option<io::Result<u8>> { None }
        fn wrapped() -> Option<Result<u8, String>> { None }
        fn typed() -> Result<String, Error> { todo!() }
        fn own_result() -> MyResult<u8, String> { todo!() }
        type Parsed<T> = std::result::Result<T, String>;
        impl FromStr for X { type Err = String; }
        impl TryFrom<u8> for X { type Error = Wrong; }
        trait Checks { fn check(&self) -> Result<(), String>; }
        #[cfg(test)]
        mod tests {
            fn inside() -> Result<(), String> { Ok(()) }
        }
    "##;
    let path = Path::new("src/example.rs");
    assert_eq!(
        string_errors(&non_test(path, text)),
        [
            "fn shipped",
            "fn wrapped",
            "type Parsed",
            "type Err",
            "fn check"
        ]
    );
    assert!(string_errors(&non_test(Path::new("src/x/tests.rs"), text)).is_empty());
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
