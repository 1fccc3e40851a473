//! Counters with labels (a listener's address, a route's match, an upstream's name).
//!
//! A labelled counter is looked up once, when a plan is built or a listener is bound, and the
//! data path then holds it by `Arc`: counting stays one atomic add, with no lookup, lock or
//! allocation per connection. The registry hands the same counters to the next plan for the
//! same labels, so a reload does not reset them.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::Counter;

/// One labelled thing's connections and bytes.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub opened: Counter,
    pub active: Counter,
    /// Bytes from the connecting side (client, local app, mesh caller) to the destination.
    pub from_client: Counter,
    /// Bytes back to the connecting side.
    pub to_client: Counter,
}

impl ConnStats {
    /// Counts a connection as opened, and as active until the guard is dropped.
    pub fn hold(&self) -> Held<'_> {
        self.opened.inc();
        self.active.inc();
        Held(self)
    }
}

/// A connection counted as active in a `ConnStats`.
pub struct Held<'a>(&'a ConnStats);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}

/// Bytes moved one way, added to the role's total and to one labelled counter at once.
#[derive(Clone, Copy)]
pub struct Tally<'a> {
    role: &'a Counter,
    labelled: Option<&'a Counter>,
}

impl<'a> Tally<'a> {
    pub fn new(role: &'a Counter, labelled: &'a Counter) -> Self {
        Tally {
            role,
            labelled: Some(labelled),
        }
    }

    /// Only the role's total (a role without labelled byte counters).
    pub fn role(role: &'a Counter) -> Self {
        Tally {
            role,
            labelled: None,
        }
    }

    pub fn add(self, n: u64) {
        self.role.add(n);
        if let Some(l) = self.labelled {
            l.add(n);
        }
    }
}

/// Values of `T` by label values, for one metric family.
///
/// A gateway may have tens of thousands of routes, each with an entry here, looked up again at
/// every reload: an entry's labels are one string (the values joined by NUL, which no label
/// holds; the joined order sorts like the tuples), and a lookup of an existing entry builds
/// its key in a reused buffer, allocating nothing.
#[derive(Debug)]
pub struct Family<T> {
    labels: &'static [&'static str],
    entries: Mutex<Entries<T>>,
}

#[derive(Debug)]
struct Entries<T> {
    map: BTreeMap<Box<str>, Arc<T>>,
    /// The key being looked up.
    scratch: String,
}

const SEPARATOR: char = '\0';

/// One entry's label values, in the order of the family's label names.
pub fn values(key: &str) -> impl Iterator<Item = &str> {
    key.split(SEPARATOR)
}

impl<T: Default> Family<T> {
    pub const fn new(labels: &'static [&'static str]) -> Self {
        Family {
            labels,
            entries: Mutex::new(Entries {
                map: BTreeMap::new(),
                scratch: String::new(),
            }),
        }
    }

    /// The value for these label values, created on first use. Called when plans are built
    /// and listeners bound, never per connection.
    pub fn get(&self, values: &[&str]) -> Arc<T> {
        let mut guard = self.lock();
        let Entries { map, scratch } = &mut *guard;
        scratch.clear();
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                scratch.push(SEPARATOR);
            }
            scratch.push_str(v);
        }
        if let Some(v) = map.get(scratch.as_str()) {
            return v.clone();
        }
        let v = Arc::<T>::default();
        map.insert(scratch.as_str().into(), v.clone());
        v
    }

    /// Forgets values nothing holds any more (a removed route once its last connection ended),
    /// so a mesh whose names churn does not grow the registry without end.
    pub fn prune(&self) {
        self.lock().map.retain(|_, v| Arc::strong_count(v) > 1);
    }

    pub fn label_names(&self) -> &'static [&'static str] {
        self.labels
    }

    /// Calls `f` with every current value and its labels (see [`values`]), in label order,
    /// copying at most `batch` entries out under the lock at a time: the registry is not held
    /// while `f` writes to a slow scraper, and a scrape does not copy every label at once.
    pub fn each_batched<E>(
        &self,
        batch: usize,
        mut f: impl FnMut(&str, &T) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut after: Option<Box<str>> = None;
        loop {
            let chunk: Vec<(Box<str>, Arc<T>)> = {
                let entries = self.lock();
                let from = match after.as_deref() {
                    Some(key) => Bound::Excluded(key),
                    None => Bound::Unbounded,
                };
                entries
                    .map
                    .range::<str, _>((from, Bound::Unbounded))
                    .take(batch.max(1))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            for (labels, value) in &chunk {
                f(labels, value)?;
            }
            match chunk.into_iter().last() {
                Some((key, _)) => after = Some(key),
                None => return Ok(()),
            }
        }
    }

    /// Every current value with its label values, in label order.
    pub fn entries(&self) -> Vec<(Box<[String]>, Arc<T>)> {
        self.lock()
            .map
            .iter()
            .map(|(k, v)| (values(k).map(str::to_owned).collect(), v.clone()))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Entries<T>> {
        // Nothing panics while holding it; if something did, the map itself is still whole.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_labels_same_counters_until_nothing_holds_them() {
        let f: Family<ConnStats> = Family::new(&["route"]);
        let a = f.get(&["db"]);
        {
            let _held = a.hold();
            assert_eq!(f.get(&["db"]).active.get(), 1);
        }
        assert_eq!(a.opened.get(), 1);
        assert_eq!(a.active.get(), 0);
        f.prune();
        assert_eq!(f.entries().len(), 1, "still held by `a`");
        drop(a);
        f.prune();
        assert!(f.entries().is_empty());
        assert_eq!(f.get(&["db"]).opened.get(), 0);
    }

    #[test]
    fn labels_keep_their_values_and_tuple_order() {
        let f: Family<ConnStats> = Family::new(&["upstream", "bind"]);
        let _held = [f.get(&["ab", ""]), f.get(&["a", "b"]), f.get(&["a", ""])];
        let keys: Vec<Vec<String>> = f.entries().into_iter().map(|e| e.0.into()).collect();
        assert_eq!(keys, [["a", ""], ["a", "b"], ["ab", ""]]);
        assert!(Arc::ptr_eq(&f.get(&["a", "b"]), &_held[1]));
    }

    #[test]
    fn tally_counts_both() {
        let (role, own) = (Counter::default(), Counter::default());
        Tally::new(&role, &own).add(5);
        Tally::role(&role).add(2);
        assert_eq!((role.get(), own.get()), (7, 5));
    }
}
