//! A simulated disk for one witness's redb store that keeps the durability contract and
//! nothing more: what was synced survives a crash of its host, what was written since the
//! last sync is lost. A crash also retires every handle the crashed process had, so a task
//! of the dead instance that still runs can never write into its successor's store.

use std::io;
use std::sync::{Arc, Mutex};

/// An undo record of a write not yet synced.
enum Undo {
    /// Bytes at `offset` before the write (the part within the old length).
    Write { offset: u64, old: Vec<u8> },
    /// The length before a resize, and the bytes a shrink cut off.
    Len { old_len: u64, tail: Vec<u8> },
}

#[derive(Default)]
struct State {
    bytes: Vec<u8>,
    /// Undo records since the last sync, oldest first.
    unsynced: Vec<Undo>,
    /// Bumped by every crash: handles of an older generation are dead.
    generation: u64,
}

/// The disk of one simulated host. Cheap to clone.
#[derive(Clone, Default)]
pub struct Disk(Arc<Mutex<State>>);

impl Disk {
    /// The host crashed: unsynced writes are lost and every handle opened before is dead.
    pub fn crash(&self) {
        let mut s = self.0.lock().unwrap();
        while let Some(undo) = s.unsynced.pop() {
            match undo {
                Undo::Write { offset, old } => {
                    let at = offset as usize;
                    s.bytes[at..at + old.len()].copy_from_slice(&old);
                }
                Undo::Len { old_len, tail } => {
                    s.bytes.resize(old_len as usize, 0);
                    let start = old_len as usize - tail.len();
                    s.bytes[start..].copy_from_slice(&tail);
                }
            }
        }
        s.generation += 1;
    }

    /// A backend for a process started on this disk now.
    pub fn handle(&self) -> DiskHandle {
        DiskHandle {
            disk: self.clone(),
            generation: self.0.lock().unwrap().generation,
        }
    }
}

/// One process's view of the disk: a redb storage backend.
pub struct DiskHandle {
    disk: Disk,
    generation: u64,
}

impl std::fmt::Debug for DiskHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DiskHandle(generation {})", self.generation)
    }
}

impl DiskHandle {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> io::Result<T>) -> io::Result<T> {
        let mut s = self.disk.0.lock().unwrap();
        if s.generation != self.generation {
            return Err(io::Error::other(
                "the process that opened this disk crashed",
            ));
        }
        f(&mut s)
    }
}

impl redb::StorageBackend for DiskHandle {
    fn len(&self) -> io::Result<u64> {
        self.with(|s| Ok(s.bytes.len() as u64))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.with(|s| {
            let at = offset as usize;
            let src = s
                .bytes
                .get(at..at + out.len())
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"))?;
            out.copy_from_slice(src);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|s| {
            let old_len = s.bytes.len() as u64;
            let tail = if len < old_len {
                s.bytes[len as usize..].to_vec()
            } else {
                Vec::new()
            };
            s.unsynced.push(Undo::Len { old_len, tail });
            s.bytes.resize(len as usize, 0);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|s| {
            s.unsynced.clear();
            Ok(())
        })
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with(|s| {
            let at = offset as usize;
            if at + data.len() > s.bytes.len() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "write past end",
                ));
            }
            let old = s.bytes[at..at + data.len()].to_vec();
            s.unsynced.push(Undo::Write { offset, old });
            s.bytes[at..at + data.len()].copy_from_slice(data);
            Ok(())
        })
    }
}
