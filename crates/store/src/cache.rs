//! A read-through cache of the point reads on every request's path (a
//! workspace by id, its newest volume, the owner of a token hash), kept only
//! while nothing has been written since.
//!
//! Every statement that may write goes through [`crate::Store::write`],
//! whose guard bumps a write epoch when it is dropped, after the statement
//! (or the transaction) has finished. An entry is served only while the
//! epoch is the one it was read under, and a read that raced a write is
//! never stored (its epoch is already old when it comes back). So any write
//! through this store, of anything, invalidates everything: coarse, but on
//! an idle fleet nothing is written and every read after the first is a hit,
//! and no write path can forget to invalidate.
//!
//! It is on for SQLite only, where this process is the database's only
//! writer. On PostgreSQL other replicas write too, and their writes bump no
//! epoch here, so every read there goes to the database.
//!
//! A write whose future is dropped mid-statement (a client that hung up)
//! may still be carried out by the database after its guard bumped the
//! epoch; an entry read in between could then be stale. So an entry whose
//! read began within [`SETTLE`] of the last write is served only until that
//! window closes; one read after it lives until the next write. On an idle
//! fleet every entry is then good for as long as nothing is written, with
//! no expiry to send reads back to the database.

use crate::{VolumeRow, WorkspaceRow};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long after a write's guard is dropped an abandoned statement of it
/// may still land (see the module comment): the one writer connection runs
/// a statement it was handed at once, and a lock wait is bounded by the
/// 5 s busy timeout.
pub(crate) const SETTLE: Duration = Duration::from_secs(6);
/// Entries per map at most; a full map is emptied before the next insert,
/// so a flood of distinct unknown tokens costs memory only up to this.
const CAP: usize = 100_000;

/// A read's place in the cache's history: the epoch it began under and
/// when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    epoch: u64,
    at: Instant,
}

/// What a token hash stands for, as the store last read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenOwner {
    Workspace { id: Uuid, org: Uuid },
    Org(Uuid),
    Nobody,
}

pub(crate) struct ReadCache {
    enabled: bool,
    settle: Duration,
    epoch: AtomicU64,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// How the read cache has done since start, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub enabled: bool,
    pub hits: u64,
    pub misses: u64,
    /// Writes, each of which ended every entry's validity.
    pub writes: u64,
}

#[derive(Default)]
pub(crate) struct Inner {
    /// The epoch every entry below was read under.
    epoch: u64,
    /// When the last write's guard was dropped.
    last_write: Option<Instant>,
    workspaces: HashMap<Uuid, (Instant, Option<WorkspaceRow>)>,
    latest_volumes: HashMap<Uuid, (Instant, Option<VolumeRow>)>,
    /// By token hash and the kind of token it was looked up as.
    tokens: HashMap<(String, TokenKind), (Instant, TokenOwner)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TokenKind {
    Workspace,
    Org,
}

/// Which map of [`Inner`] an entry lives in.
pub(crate) trait Entry: Sized + Clone {
    type Key: Hash + Eq;
    fn map(inner: &mut Inner) -> &mut HashMap<Self::Key, (Instant, Self)>;
}

impl Entry for Option<WorkspaceRow> {
    type Key = Uuid;
    fn map(inner: &mut Inner) -> &mut HashMap<Uuid, (Instant, Self)> {
        &mut inner.workspaces
    }
}

impl Entry for Option<VolumeRow> {
    type Key = Uuid;
    fn map(inner: &mut Inner) -> &mut HashMap<Uuid, (Instant, Self)> {
        &mut inner.latest_volumes
    }
}

impl Entry for TokenOwner {
    type Key = (String, TokenKind);
    fn map(inner: &mut Inner) -> &mut HashMap<(String, TokenKind), (Instant, Self)> {
        &mut inner.tokens
    }
}

impl Inner {
    fn clear(&mut self) {
        self.workspaces.clear();
        self.latest_volumes.clear();
        self.tokens.clear();
    }
}

impl ReadCache {
    pub(crate) fn new(enabled: bool) -> ReadCache {
        ReadCache::settling(enabled, SETTLE)
    }

    fn settling(enabled: bool, settle: Duration) -> ReadCache {
        ReadCache {
            enabled,
            settle,
            epoch: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            enabled: self.enabled,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            writes: self.epoch.load(Ordering::Relaxed),
        }
    }

    /// Called when a write has finished (or was abandoned).
    pub(crate) fn wrote(&self) {
        if self.enabled {
            let mut inner = self.lock();
            inner.last_write = Some(Instant::now());
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The epoch to read under and when the read began, before reading;
    /// `None` when off.
    pub(crate) fn begin_read(&self) -> Option<Ticket> {
        self.enabled.then(|| Ticket {
            epoch: self.epoch.load(Ordering::SeqCst),
            at: Instant::now(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind: usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A valid entry for `key`, if there is one.
    pub(crate) fn get<E: Entry>(&self, key: &E::Key) -> Option<E> {
        if !self.enabled {
            return None;
        }
        let mut inner = self.lock();
        let now = self.epoch.load(Ordering::SeqCst);
        if inner.epoch != now {
            inner.clear();
            inner.epoch = now;
        }
        // Until the last write has settled, entries read meanwhile are
        // served; after, only those read once it had.
        let settled = inner.last_write.map(|w| w + self.settle);
        let found = match E::map(&mut inner).get(key) {
            Some((at, v)) if settled.is_none_or(|s| *at >= s || Instant::now() < s) => {
                Some(v.clone())
            }
            _ => None,
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps what was read under `epoch`, unless something was written since.
    pub(crate) fn put<E: Entry>(&self, ticket: Option<Ticket>, key: E::Key, value: E) {
        let Some(Ticket { epoch, at }) = ticket else {
            return;
        };
        let mut inner = self.lock();
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        if inner.epoch != epoch {
            inner.clear();
            inner.epoch = epoch;
        }
        let map = E::map(&mut inner);
        if map.len() >= CAP {
            map.clear();
        }
        map.insert(key, (at, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(n: u128) -> TokenOwner {
        TokenOwner::Org(Uuid::from_u128(n))
    }

    fn key(s: &str) -> (String, TokenKind) {
        (s.to_owned(), TokenKind::Org)
    }

    #[test]
    fn a_read_is_served_until_the_next_write() {
        let c = ReadCache::new(true);
        let e = c.begin_read();
        c.put(e, key("a"), owner(1));
        assert_eq!(c.get::<TokenOwner>(&key("a")), Some(owner(1)));
        c.wrote();
        assert_eq!(c.get::<TokenOwner>(&key("a")), None);
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let c = ReadCache::new(true);
        let e = c.begin_read();
        // The write lands while the read is in flight.
        c.wrote();
        c.put(e, key("a"), owner(1));
        assert_eq!(c.get::<TokenOwner>(&key("a")), None);
        // A read begun after it is kept.
        let e = c.begin_read();
        c.put(e, key("a"), owner(2));
        assert_eq!(c.get::<TokenOwner>(&key("a")), Some(owner(2)));
    }

    #[test]
    fn an_entry_read_while_a_write_settles_is_dropped_when_it_has() {
        let c = ReadCache::settling(true, Duration::from_millis(200));
        c.wrote();
        let e = c.begin_read();
        c.put(e, key("early"), owner(1));
        assert_eq!(c.get::<TokenOwner>(&key("early")), Some(owner(1)));
        std::thread::sleep(Duration::from_millis(250));
        // A statement of that write could have landed after this read.
        assert_eq!(c.get::<TokenOwner>(&key("early")), None);
        // Read once it has settled: kept until the next write, with no
        // expiry.
        let e = c.begin_read();
        c.put(e, key("late"), owner(2));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(c.get::<TokenOwner>(&key("late")), Some(owner(2)));
        c.wrote();
        assert_eq!(c.get::<TokenOwner>(&key("late")), None);
    }

    #[test]
    fn off_keeps_nothing() {
        let c = ReadCache::new(false);
        let e = c.begin_read();
        assert_eq!(e, None);
        c.put(e, key("a"), owner(1));
        assert_eq!(c.get::<TokenOwner>(&key("a")), None);
    }

    #[test]
    fn a_full_map_starts_over() {
        let c = ReadCache::new(true);
        let e = c.begin_read();
        for i in 0..CAP {
            c.put(e, key(&i.to_string()), owner(1));
        }
        c.put(e, key("last"), owner(2));
        assert_eq!(c.get::<TokenOwner>(&key("0")), None);
        assert_eq!(c.get::<TokenOwner>(&key("last")), Some(owner(2)));
        assert_eq!(c.lock().tokens.len(), 1);
    }
}
