//! Typed reading of one TOML table that records every problem with its key path instead of
//! stopping at the first one, and reports keys nobody asked for.
//!
//! serde's `deny_unknown_fields` stops at the first error; an operator fixing a file on a
//! device over a slow link wants all of them in one run.

use std::cell::RefCell;
use std::fmt;
use std::time::Duration;

use toml::{Table, Value};

/// One problem in the file: where (key path) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Collects errors from every part of the file.
#[derive(Default)]
pub struct Errors(RefCell<Vec<ConfigError>>, Warnings);

/// Problems that do not make the file invalid but that an operator should act on (a key
/// file others can read): shown by `check`, logged by `run` and every reload.
#[derive(Default)]
struct Warnings(RefCell<Vec<ConfigError>>);

impl Errors {
    pub fn push(&self, path: impl Into<String>, message: impl Into<String>) {
        self.0.borrow_mut().push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn into_vec(self) -> Vec<ConfigError> {
        self.0.into_inner()
    }

    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    /// The warnings so far, as `key.path: message` lines.
    pub fn warnings(&self) -> Vec<String> {
        self.1 .0.borrow().iter().map(ToString::to_string).collect()
    }
}

/// A table being read. Every key asked for is remembered; `finish` reports the rest as unknown.
pub struct Fields<'a> {
    path: String,
    table: &'a Table,
    used: RefCell<Vec<&'a str>>,
    errs: &'a Errors,
}

impl<'a> Fields<'a> {
    pub fn root(table: &'a Table, errs: &'a Errors) -> Self {
        Fields {
            path: String::new(),
            table,
            used: RefCell::default(),
            errs,
        }
    }

    /// The key path of `key` inside this table, e.g. `gateway.listen`.
    pub fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn error(&self, key: &str, message: impl Into<String>) {
        self.errs.push(self.path_of(key), message);
    }

    /// An error at a full path already built (a list element).
    pub fn error_at(&self, path: &str, message: impl Into<String>) {
        self.errs.push(path, message);
    }

    /// A warning about `key`: the file stays valid.
    pub fn warn(&self, key: &str, message: impl Into<String>) {
        self.errs.1 .0.borrow_mut().push(ConfigError {
            path: self.path_of(key),
            message: message.into(),
        });
    }

    /// An error about the table itself (e.g. a missing combination of keys).
    pub fn error_here(&self, message: impl Into<String>) {
        self.errs.push(self.path.clone(), message);
    }

    fn get(&self, key: &'a str) -> Option<&'a Value> {
        self.used.borrow_mut().push(key);
        self.table.get(key)
    }

    fn typed<T>(
        &self,
        key: &'a str,
        want: &str,
        pick: impl Fn(&'a Value) -> Option<T>,
    ) -> Option<T> {
        let value = self.get(key)?;
        let picked = pick(value);
        if picked.is_none() {
            self.error(key, format!("expected {want}, found {}", value.type_str()));
        }
        picked
    }

    pub fn str(&self, key: &'a str) -> Option<&'a str> {
        self.typed(key, "a string", Value::as_str)
    }

    pub fn required_str(&self, key: &'a str) -> Option<&'a str> {
        let value = self.str(key);
        if value.is_none() && !self.table.contains_key(key) {
            self.error(key, "is required");
        }
        value
    }

    /// A whole number in `min..=max`.
    pub fn int(&self, key: &'a str, min: i64, max: i64) -> Option<i64> {
        let n = self.typed(key, "a whole number", Value::as_integer)?;
        if n < min || n > max {
            self.error(key, format!("{n} is out of range ({min} to {max})"));
            return None;
        }
        Some(n)
    }

    /// Milliseconds, at least 1 and at most a day: zero would mean "fail at once" and a
    /// typo in seconds would otherwise pass silently.
    pub fn millis(&self, key: &'a str, default: u64) -> Duration {
        let ms = self
            .int(key, 1, 86_400_000)
            .map_or(default, |n| n.unsigned_abs());
        Duration::from_millis(ms)
    }

    /// A list of strings; each element is handed to `each` with its own key path.
    pub fn str_list(&self, key: &'a str) -> Option<Vec<(String, &'a str)>> {
        let items = self.typed(key, "a list of strings", Value::as_array)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.path_of(key));
            match item.as_str() {
                Some(s) => out.push((path, s)),
                None => self.errs.push(
                    path,
                    format!("expected a string, found {}", item.type_str()),
                ),
            }
        }
        Some(out)
    }

    /// Whether the table holds `key` (read or not).
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    pub fn bool(&self, key: &'a str) -> Option<bool> {
        self.typed(key, "true or false", Value::as_bool)
    }

    /// A list whose elements may take more than one form (`"addr:port"` or a table), each
    /// with its own key path.
    pub fn list(&self, key: &'a str) -> Option<Vec<(String, &'a Value)>> {
        let items = self.typed(key, "a list", Value::as_array)?;
        Some(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{}[{i}]", self.path_of(key)), v))
                .collect(),
        )
    }

    /// A table met inside a list (`list`), read at its own key path.
    pub fn table_at(&self, path: String, table: &'a Table) -> Fields<'a> {
        self.child(path, table)
    }

    /// A table of strings (`meta = { version = "v2" }`).
    pub fn str_map(&self, key: &'a str) -> Option<std::collections::BTreeMap<String, String>> {
        let t = self.typed(key, "a table of strings", Value::as_table)?;
        let mut out = std::collections::BTreeMap::new();
        for (k, v) in t {
            match v.as_str() {
                Some(s) => {
                    out.insert(k.clone(), s.to_owned());
                }
                None => self.errs.push(
                    format!("{}.{k}", self.path_of(key)),
                    format!("expected a string, found {}", v.type_str()),
                ),
            }
        }
        Some(out)
    }

    pub fn table(&self, key: &'a str) -> Option<Fields<'a>> {
        let t = self.typed(key, "a table", Value::as_table)?;
        Some(self.child(self.path_of(key), t))
    }

    /// An array of tables (`[[catalog.services]]`), each with its indexed key path.
    pub fn tables(&self, key: &'a str) -> Vec<Fields<'a>> {
        let Some(items) = self.typed(key, "a list of tables", Value::as_array) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.path_of(key));
            match item.as_table() {
                Some(t) => out.push(self.child(path, t)),
                None => self
                    .errs
                    .push(path, format!("expected a table, found {}", item.type_str())),
            }
        }
        out
    }

    /// Every entry of a table keyed by user-chosen names (`service_defaults.<name>`), each
    /// of which must itself be a table.
    pub fn each_table(&self) -> Vec<(String, Fields<'a>)> {
        let mut out = Vec::new();
        for (key, value) in self.table {
            self.used.borrow_mut().push(key);
            match value.as_table() {
                Some(t) => out.push((key.clone(), self.child(self.path_of(key), t))),
                None => self.error(key, format!("expected a table, found {}", value.type_str())),
            }
        }
        out
    }

    fn child(&self, path: String, table: &'a Table) -> Fields<'a> {
        Fields {
            path,
            table,
            used: RefCell::default(),
            errs: self.errs,
        }
    }

    /// Reports every key that was not read, with a suggestion when one is close.
    pub fn finish(&self) {
        let used = self.used.borrow();
        for key in self.table.keys() {
            if used.contains(&key.as_str()) {
                continue;
            }
            let hint = closest(key, used.iter().copied())
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            self.errs
                .push(self.path_of(key), format!("unknown key{hint}"));
        }
    }
}

/// The known key within two edits of `key`, for "did you mean" hints. Candidates are the keys
/// the reader asked for, so a hint always names a key that exists in the contract.
fn closest<'k>(key: &str, known: impl Iterator<Item = &'k str>) -> Option<&'k str> {
    known
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("listen", "listen"), 0);
        assert_eq!(edit_distance("lisen", "listen"), 1);
        assert_eq!(edit_distance("connect_timeout", "connect_timeout_ms"), 3);
    }
}
