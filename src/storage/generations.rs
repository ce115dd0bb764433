//! Write generations: how a replica on SQLite knows, without asking the database, that nothing it
//! keeps of an onboarding has been written since it read it.
//!
//! Every process serving one SQLite file maps a small file beside it (`<database>-generations`) and
//! shares two counters per slot there; an onboarding's slot is a hash of its tenant and
//! environment. A transaction that writes an onboarding (moves its revision or its audit trail)
//! increments `started` for the onboarding's slot while it holds SQLite's write lock, just before
//! COMMIT — so the values it takes (its tickets) are in commit order — and `finished` once COMMIT
//! has returned, whatever it returned. A slot is *settled* at `v` when both read `v`: then every
//! write with a ticket up to `v` has committed or failed, and no later one has begun.
//!
//! What a replica keeps of an onboarding is stamped with a generation: the ticket of the write that
//! left it, or the settled value seen before the database was asked (a read, or the query that found
//! the kept copy current). A read may answer from the kept copy only while the slot is still settled
//! at its stamp, which proves that no write of the onboarding has begun since the copy was current.
//! Anything else (a write in flight, a slot shared with another onboarding that was written, a
//! copy never stamped) sends the read to the database as on PostgreSQL, where replicas share no
//! memory and every read asks.
//!
//! A process that dies between the two increments leaves its slot unsettled: its onboardings are
//! then read from the database until every process has let go of the file, and the first to map it
//! again starts the counters afresh.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

use crate::domain::Environment;

/// Slots in the file (two counters each): onboardings beyond this share slots, which costs a read
/// of the database now and then, never a stale answer.
const SLOTS: usize = 16_384;

/// No stamp: a kept copy that is never answered from without asking the database.
pub(super) const UNSTAMPED: u64 = u64::MAX;

/// The counters shared by every process on one SQLite file (see the module's documentation).
pub(super) struct Generations {
    /// The mapped file: `started` for every slot, then `finished` for every slot.
    map: memmap2::MmapMut,
    /// Held with a shared lock for as long as the process uses the counters.
    _file: File,
}

impl Generations {
    /// Maps the counters of the SQLite database at `database`, creating the file if need be; the
    /// first process to map it (no other holds it) starts the counters at zero.
    pub fn open(database: &Path) -> anyhow::Result<Self> {
        let path = path_beside(database);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let length = (2 * SLOTS * size_of::<u64>()) as u64;
        let alone = match file.try_lock() {
            Ok(()) => true,
            Err(TryLockError::WouldBlock) => false,
            Err(TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("locking {}", path.display()));
            }
        };
        if alone {
            // No process holds the counters: whatever a dead one left half done is void.
            file.set_len(0)
                .and_then(|()| file.set_len(length))
                .with_context(|| format!("resetting {}", path.display()))?;
            file.unlock()?;
        }
        file.lock_shared()
            .with_context(|| format!("locking {}", path.display()))?;
        if file.metadata()?.len() < length {
            anyhow::bail!("{} is shorter than expected", path.display());
        }
        // SAFETY: the mapping is shared with the other processes on this file and changes under
        // us; it is only ever read and written through atomics (`counter`), and the file is never
        // shortened while a process holds its shared lock.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }
            .with_context(|| format!("mapping {}", path.display()))?;
        Ok(Self { map, _file: file })
    }

    fn counter(&self, index: usize) -> &AtomicU64 {
        assert!(index < 2 * SLOTS);
        // SAFETY: the map is page-aligned and at least 2 × SLOTS × 8 bytes long (checked in
        // `open`), so every index below 2 × SLOTS is an aligned u64 inside it; AtomicU64 has the
        // layout of u64; and every access to the mapped counters goes through atomics.
        unsafe { &*self.map.as_ptr().cast::<AtomicU64>().add(index) }
    }

    fn started(&self, slot: Slot) -> &AtomicU64 {
        self.counter(slot.0)
    }

    fn finished(&self, slot: Slot) -> &AtomicU64 {
        self.counter(SLOTS + slot.0)
    }

    /// The generation `slot` is settled at, if no write of it is in flight.
    pub fn settled(&self, slot: Slot) -> Option<u64> {
        let finished = self.finished(slot).load(Ordering::SeqCst);
        let started = self.started(slot).load(Ordering::SeqCst);
        (started == finished).then_some(finished)
    }

    /// Tickets for a write of `slots` about to commit; call only while holding SQLite's write lock.
    /// Every slot is finished again when the returned [`Writing`] is dropped.
    pub fn begin(&self, slots: Vec<Slot>) -> Writing<'_> {
        let tickets = slots
            .into_iter()
            .map(|slot| (slot, self.started(slot).fetch_add(1, Ordering::SeqCst) + 1))
            .collect();
        Writing {
            generations: self,
            tickets,
        }
    }
}

/// `<database>-generations`.
fn path_beside(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-generations");
    PathBuf::from(name)
}

/// An onboarding's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Slot(usize);

impl Slot {
    /// The slot of the onboarding of `tenant` in `environment` (FNV-1a, mixed: the same in every
    /// build, so that processes of different versions agree).
    pub fn of(tenant: &str, environment: Environment) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in environment
            .as_str()
            .bytes()
            .chain(std::iter::once(b'/'))
            .chain(tenant.bytes())
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // FNV's low bits vary little between similar names: mix them in (MurmurHash3's finaliser).
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        Self((hash % SLOTS as u64) as usize)
    }
}

/// A write between its tickets and the end of its COMMIT.
pub(super) struct Writing<'g> {
    generations: &'g Generations,
    tickets: Vec<(Slot, u64)>,
}

impl Writing<'_> {
    /// What the write's COMMIT leaves: each slot's ticket.
    pub fn stamps(&self) -> Stamps {
        Stamps(self.tickets.clone())
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        for (slot, _) in &self.tickets {
            self.generations
                .finished(*slot)
                .fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The tickets of a committed write, by slot: the generations what it left is current at.
#[derive(Debug, Clone, Default)]
pub struct Stamps(Vec<(Slot, u64)>);

impl Stamps {
    /// The stamp for what the write left of the onboarding of `tenant` in `environment`.
    pub fn of(&self, tenant: &str, environment: Environment) -> u64 {
        let slot = Slot::of(tenant, environment);
        self.0
            .iter()
            .find(|(s, _)| *s == slot)
            .map_or(UNSTAMPED, |(_, ticket)| *ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_settled_only_between_writes_and_each_process_sees_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("kept.sqlite3");
        let one = Generations::open(&database).unwrap();
        let other = Generations::open(&database).unwrap();
        let slot = Slot::of("acme", Environment::Test);
        assert_eq!(one.settled(slot), Some(0));

        let writing = one.begin(vec![slot]);
        assert_eq!(writing.stamps().of("acme", Environment::Test), 1);
        assert_eq!(other.settled(slot), None, "a write in flight");
        drop(writing);
        assert_eq!(other.settled(slot), Some(1));
        assert_eq!(
            Stamps::default().of("acme", Environment::Test),
            UNSTAMPED,
            "a write that did not touch it"
        );

        // A process that dies mid-write leaves the slot unsettled while others hold the file ...
        std::mem::forget(other.begin(vec![slot]));
        let third = Generations::open(&database).unwrap();
        assert_eq!(third.settled(slot), None);
        // ... and the first to map it again, alone, starts afresh.
        drop((one, other, third));
        let fresh = Generations::open(&database).unwrap();
        assert_eq!(fresh.settled(slot), Some(0));
    }

    #[test]
    fn slots_are_spread_and_the_same_in_every_build() {
        assert_eq!(
            Slot::of("acme", Environment::Test),
            Slot::of("acme", Environment::Test)
        );
        assert_ne!(
            Slot::of("acme", Environment::Test),
            Slot::of("acme", Environment::Production)
        );
        let slots: std::collections::HashSet<_> = (0..1000)
            .map(|n| Slot::of(&format!("tenant-{n}"), Environment::Test))
            .collect();
        assert!(slots.len() > 950, "{} distinct of 1000", slots.len());
    }
}
