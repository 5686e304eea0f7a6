// raftkv patch: this file is raftkv's (see PATCH.md).

//! Tests of raftkv's changes to lsm-tree, one or more for each change in PATCH.md; each
//! fails without its change. The lock-scope changes are checked with `probe`: every
//! time this thread waits on the disk, is the super version write lock (which every
//! insert and read takes, to read) held?

use crate::{probe, AbstractTree, AnyTree, Config, SeqNo, SequenceNumberCounter};
use rand::RngCore;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Each piece of file work on this thread, and whether the version write lock was held.
type Seen = Arc<Mutex<Vec<(&'static str, bool)>>>;

fn open(dir: &Path) -> crate::Result<AnyTree> {
    Config::new(
        dir,
        SequenceNumberCounter::default(),
        SequenceNumberCounter::default(),
    )
    .open()
}

fn watch_version_lock(tree: &AnyTree) -> (Seen, probe::Installed) {
    let AnyTree::Standard(tree) = tree else {
        unreachable!("Config::open without blob separation opens a standard tree")
    };
    let lock = tree.version_history.clone();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let installed = probe::install(move |what| {
        // Only this thread takes the lock in these tests: a failed try is its own hold.
        let held = lock.try_read().is_err();
        record.lock().expect("not poisoned").push((what, held));
    });
    (seen, installed)
}

/// Overwrites keys 0..keys with `value`, each under the next sequence number.
fn write_keys(tree: &AnyTree, seqno: &mut SeqNo, keys: u32, value: &[u8]) {
    for k in 0..keys {
        tree.insert(k.to_be_bytes(), value.to_vec(), *seqno);
        *seqno += 1;
    }
}

fn table_files(dir: &Path) -> crate::Result<usize> {
    Ok(std::fs::read_dir(dir.join(crate::file::TABLES_FOLDER))?.count())
}

/// Changes 1-3: a flush and a compaction write and fsync their tables and the version
/// record, and drop the versions they retire (unlinking deleted tables), without the
/// version write lock.
#[test]
fn flushes_compactions_and_version_gc_wait_on_the_disk_outside_the_version_lock(
) -> crate::Result<()> {
    let dir = tempfile::tempdir()?;
    let tree = open(dir.path())?;
    let (seen, _probe) = watch_version_lock(&tree);
    let mut seqno = 0;
    for round in 0..3u8 {
        for _ in 0..3 {
            write_keys(&tree, &mut seqno, 1_000, &[round; 100]);
            // The version GC that runs with the flush retires the versions that
            // still hold the tables the last compaction merged: their last holders.
            tree.flush_active_memtable(seqno)?;
        }
        tree.major_compact(64 << 20, 0)?;
    }
    write_keys(&tree, &mut seqno, 1, b"last");
    tree.flush_active_memtable(seqno)?;
    assert_eq!(2, tree.table_count());

    // The tables merged away are unlinked once no version holds them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while table_files(dir.path())? > tree.table_count() {
        assert!(Instant::now() < deadline, "merged tables were never deleted");
        std::thread::sleep(Duration::from_millis(10));
    }

    let seen = seen.lock().expect("not poisoned").clone();
    let under_lock: Vec<_> = seen.iter().filter(|(_, held)| *held).collect();
    assert!(under_lock.is_empty(), "file work under the version lock: {under_lock:?}");
    // (The merged tables were unlinked, above, but not on this thread: the versions
    // that held them last were dropped on the retiring thread.)
    for work in ["table fsync", "version record fsync"] {
        assert!(seen.iter().any(|(w, _)| *w == work), "no {work} in {seen:?}");
    }
    Ok(())
}

/// Change 4: a table goes to the disk a chunk at a time as it is written, so its closing
/// fsync does not hand the disk the whole table at once.
#[test]
fn a_table_is_written_back_in_chunks_before_its_fsync() -> crate::Result<()> {
    let dir = tempfile::tempdir()?;
    let tree = open(dir.path())?;
    let (seen, _probe) = watch_version_lock(&tree);
    // 4 MiB that do not compress.
    let mut seqno = 0;
    let mut value = vec![0; 1024];
    for k in 0..4_096u32 {
        rand::rng().fill_bytes(&mut value);
        tree.insert(k.to_be_bytes(), value.clone(), seqno);
        seqno += 1;
    }
    tree.flush_active_memtable(0)?;

    let seen = seen.lock().expect("not poisoned").clone();
    let before_fsync: Vec<_> = seen
        .iter()
        .take_while(|(w, _)| *w != "table fsync")
        .filter(|(w, _)| *w == "table write back")
        .collect();
    assert!(
        before_fsync.len() >= 3,
        "a 4 MiB table was written back in {} chunks before its fsync: {seen:?}",
        before_fsync.len()
    );
    Ok(())
}

/// Change 5: once a memtable is flushed, its size no longer counts, although retired
/// versions may still hold it until the next version GC.
#[test]
fn the_latest_memtable_size_drops_to_zero_once_flushed() -> crate::Result<()> {
    let dir = tempfile::tempdir()?;
    let tree = open(dir.path())?;
    let mut seqno = 0;
    write_keys(&tree, &mut seqno, 1_000, &[7; 100]);
    assert!(tree.latest_memtable_size_sum() >= 100_000);

    tree.flush_active_memtable(0)?;

    assert_eq!(0, tree.latest_memtable_size_sum());
    assert!(tree.version_memtable_size_sum() >= tree.latest_memtable_size_sum());
    assert_eq!(Some(vec![7; 100].into()), tree.get(5u32.to_be_bytes(), seqno)?);
    Ok(())
}
