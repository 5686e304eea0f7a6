//! The WAL on open: torn and corrupt tails, corruption in the middle, rollover and
//! purge, and the Raft log store's replay on top.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use raftkv_storage::wal::{segment, OpenReport, RecordKind, Request, Wal, WalError, WalOptions};

fn options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 64 << 10,
        max_record_size_bytes: 16 << 10,
        ..WalOptions::default()
    }
}

/// Payload of entry `index`: the index, then bytes derived from it (sizes vary so
/// records straddle sector boundaries).
fn payload(index: u64) -> Vec<u8> {
    let mut out = index.to_le_bytes().to_vec();
    let len = 20 + (index * 37 % 900) as usize;
    out.extend((0..len).map(|i| (index as usize * 31 + i) as u8));
    out
}

fn open_collect(dir: &Path) -> Result<(Wal, Vec<u64>, OpenReport), WalError> {
    let mut indexes = Vec::new();
    let (wal, report) = Wal::open(dir, options(), |kind, p| {
        if kind == RecordKind::Entry {
            let index = u64::from_le_bytes(p[..8].try_into().unwrap());
            if p != payload(index).as_slice() {
                return Err(format!("entry {index} has the wrong bytes"));
            }
            indexes.push(index);
        }
        Ok(())
    })?;
    Ok((wal, indexes, report))
}

fn append(wal: &Wal, indexes: std::ops::Range<u64>) {
    let (tx, rx) = mpsc::channel();
    let count = indexes.end - indexes.start;
    for index in indexes {
        let tx = tx.clone();
        wal.submit_blocking(Request {
            records: vec![(RecordKind::Entry, payload(index))],
            sync: true,
            done: Box::new(move |r| tx.send(r.map(|_| index)).unwrap()),
        })
        .unwrap();
    }
    for _ in 0..count {
        rx.recv().unwrap().expect("append is durable");
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    segment::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// Offsets of every record in a segment file.
fn record_offsets(path: &Path) -> Vec<usize> {
    let buf = std::fs::read(path).unwrap();
    let scan = segment::scan(&buf, path, true, 16 << 10).unwrap();
    scan.records.iter().map(|r| r.offset).collect()
}

#[test]
fn reopen_keeps_everything_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, got, _) = open_collect(dir.path()).unwrap();
    assert!(got.is_empty());
    append(&wal, 0..300);
    drop(wal);
    let (wal, got, report) = open_collect(dir.path()).unwrap();
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    assert!(
        report.segments > 1,
        "300 records of ~500 bytes span several 64 KiB segments"
    );
    assert!(report.torn_tail.is_none());
    append(&wal, 300..310);
    drop(wal);
    let (_, got, _) = open_collect(dir.path()).unwrap();
    assert_eq!(got.len(), 310);
}

#[test]
fn the_directory_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let (_wal, _, _) = open_collect(dir.path()).unwrap();
    match open_collect(dir.path()) {
        Err(WalError::Locked { .. }) => {}
        other => panic!(
            "a second open must fail as locked, got {:?}",
            other.map(|(_, i, _)| i)
        ),
    }
}

/// Builds a log of `n` entries and returns (dir, last segment, offset of last record,
/// end of data).
fn fixture(n: u64) -> (tempfile::TempDir, PathBuf, usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open_collect(dir.path()).unwrap();
    append(&wal, 0..n);
    drop(wal);
    let last = segments(dir.path()).pop().unwrap();
    let offsets = record_offsets(&last);
    let buf = std::fs::read(&last).unwrap();
    let end = segment::last_nonzero_byte(&buf, 0).unwrap() + 1;
    (dir, last, *offsets.last().unwrap(), end)
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A copy of the log in `base` whose segment `name` is cut at `cut`: `how` is
/// "truncate" (the file itself is cut short) or "zero" (the write never reached the
/// disk past `cut`; `end` is the end of data).
fn cut_copy(
    base: &Path,
    name: &std::ffi::OsStr,
    cut: usize,
    end: usize,
    how: &str,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(base, dir.path());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(name))
        .unwrap();
    if how == "truncate" {
        file.set_len(cut as u64).unwrap();
    } else {
        file.write_all_at(&vec![0u8; end - cut], cut as u64)
            .unwrap();
    }
    dir
}

#[test]
fn torn_tail_cut_at_every_byte_of_the_last_record() {
    let (base, last, last_offset, end) = fixture(40);
    let name = last.file_name().unwrap().to_owned();
    for cut in last_offset..end {
        for how in ["truncate", "zero"] {
            let dir = cut_copy(base.path(), &name, cut, end, how);
            let (wal, got, report) =
                open_collect(dir.path()).unwrap_or_else(|e| panic!("{how} at {cut}: {e}"));
            let expect_whole = cut == end && how == "truncate";
            let want: Vec<u64> = (0..if expect_whole { 40 } else { 39 }).collect();
            assert_eq!(got, want, "{how} at {cut}");
            if cut > last_offset {
                assert!(
                    report.torn_tail.is_some(),
                    "{how} at {cut} must report the cut"
                );
            }
            // The repaired log takes appends and reopens cleanly.
            append(&wal, 39..41);
            drop(wal);
            let (_, got, report) = open_collect(dir.path()).unwrap();
            assert!(
                report.torn_tail.is_none(),
                "{how} at {cut}: the repair was durable"
            );
            assert_eq!(got.last(), Some(&40));
            assert_eq!(got.len(), 41);
        }
    }
}

#[test]
fn flipped_byte_in_the_last_record_is_a_torn_tail() {
    let (base, last, last_offset, end) = fixture(40);
    let name = last.file_name().unwrap().to_owned();
    for at in (last_offset..end).step_by(7) {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let path = dir.path().join(&name);
        let mut buf = std::fs::read(&path).unwrap();
        buf[at] ^= 0x10;
        std::fs::write(&path, &buf).unwrap();
        let (_, got, report) =
            open_collect(dir.path()).unwrap_or_else(|e| panic!("flip at {at}: {e}"));
        assert_eq!(got, (0..39).collect::<Vec<_>>(), "flip at {at}");
        assert!(report.torn_tail.is_some());
    }
}

#[test]
fn flipped_byte_in_the_middle_is_a_hard_error_naming_file_and_offset() {
    let (base, last, _, _) = fixture(40);
    let name = last.file_name().unwrap().to_owned();
    let offsets = record_offsets(&last);
    // Records before the last one in the last segment, and records in older segments.
    let mut targets: Vec<(PathBuf, usize)> = offsets[1..offsets.len() - 1]
        .iter()
        .map(|&o| (last.clone(), o + 12))
        .collect();
    let first = segments(base.path())[0].clone();
    targets.push((first.clone(), record_offsets(&first)[3] + 9));
    for (file, at) in targets {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let path = dir.path().join(file.file_name().unwrap());
        let mut buf = std::fs::read(&path).unwrap();
        buf[at] ^= 0x01;
        std::fs::write(&path, &buf).unwrap();
        match open_collect(dir.path()) {
            Err(WalError::Corrupt {
                path: p,
                offset,
                reason,
            }) => {
                assert_eq!(p.file_name(), path.file_name(), "names the file");
                assert!(
                    offset as usize <= at && at < offset as usize + 1024,
                    "offset {offset} near {at}: {reason}"
                );
            }
            Err(e) => panic!("flip at {at} gave {e}"),
            Ok((_, got, _)) => panic!(
                "flip at {at} in the middle went unnoticed: {} entries",
                got.len()
            ),
        }
        let _ = name.len();
    }
}

#[test]
fn purge_deletes_whole_segments_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open_collect(dir.path()).unwrap();
    append(&wal, 0..800);
    let before = segments(dir.path()).len();
    assert!(before >= 4);
    let (tx, rx) = mpsc::channel();
    let mut purge = 500u64.to_le_bytes().to_vec();
    purge.extend_from_slice(b"log id bytes");
    wal.submit_blocking(Request {
        records: vec![(RecordKind::Purge, purge)],
        sync: true,
        done: Box::new(move |r| tx.send(r).unwrap()),
    })
    .unwrap();
    rx.recv().unwrap().unwrap();
    // Their files go on the deleter's thread, soon after the purge is durable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut after = segments(dir.path()).len();
    while after >= before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        after = segments(dir.path()).len();
    }
    assert!(
        after < before,
        "segments wholly below the purge point are gone ({before} -> {after})"
    );
    drop(wal);
    let mut purged_seen = 0;
    let (_, got, _) = Wal::open(dir.path(), options(), |kind, p| {
        if kind == RecordKind::Purge {
            purged_seen = u64::from_le_bytes(p[..8].try_into().unwrap());
        }
        Ok(())
    })
    .map(|(w, r)| (w, Vec::<u64>::new(), r))
    .unwrap();
    assert!(got.is_empty());
    assert_eq!(
        purged_seen, 500,
        "the purge point survives in the next segment's header"
    );
    let (_, got, _) = open_collect(dir.path()).unwrap();
    assert!(got.first().copied().unwrap_or(0) <= 501 && got.last() == Some(&799));
}

const PAGE: usize = raftkv_storage::wal::record::PAGE_SIZE_BYTES as usize;

/// Appends entry `index` alone and waits until it is durable: one synced batch.
fn append_one(wal: &Wal, index: u64) {
    append(wal, index..index + 1);
}

/// (offset, end) of every record the scan reports in `path`, and where each skip to a
/// page boundary starts: a record that does not start where the one before ended.
fn records_and_skips(path: &Path) -> (Vec<(usize, usize)>, Vec<usize>) {
    let buf = std::fs::read(path).unwrap();
    let scan = segment::scan(&buf, path, true, 16 << 10).unwrap();
    let spans: Vec<(usize, usize)> = scan
        .records
        .iter()
        .map(|r| {
            let end = r.offset + raftkv_storage::wal::record::framed_size_bytes(r.payload.len());
            (r.offset, end)
        })
        .collect();
    let skips = spans
        .windows(2)
        .filter(|w| w[1].0 != w[0].1)
        .map(|w| w[0].1)
        .collect();
    (spans, skips)
}

#[test]
fn a_synced_batch_that_fits_a_page_is_written_inside_one() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open_collect(dir.path()).unwrap();
    for index in 0..60 {
        append_one(&wal, index);
    }
    drop(wal);
    // 60 records of 37 – 936 bytes: one segment, so every batch is in the last one.
    let last = segments(dir.path()).pop().unwrap();
    let (spans, skips) = records_and_skips(&last);
    assert_eq!(spans.len(), 61, "the segment header and 60 entries");
    // The first append after open does not skip: the page the last run left may be dirty.
    for &(offset, end) in &spans[2..] {
        assert_eq!(
            offset / PAGE,
            (end - 1) / PAGE,
            "record {offset}..{end} straddles a page boundary though it fits in one"
        );
    }
    assert!(skips.len() >= 5, "skips: {skips:?}");
    let buf = std::fs::read(&last).unwrap();
    for &gap_start in &skips {
        let boundary = gap_start.div_ceil(PAGE) * PAGE;
        assert!(
            buf[gap_start..boundary].iter().all(|&b| b == 0),
            "the skipped bytes at {gap_start} stay zeros"
        );
    }
    let (wal, got, report) = open_collect(dir.path()).unwrap();
    assert_eq!(got, (0..60).collect::<Vec<_>>());
    assert!(report.torn_tail.is_none());
    append(&wal, 60..70);
    drop(wal);
    let (_, got, _) = open_collect(dir.path()).unwrap();
    assert_eq!(got, (0..70).collect::<Vec<_>>());
}

/// A log whose last append skipped to a page boundary: (dir, last segment, where the
/// skip starts, end of data, entries).
fn fixture_ending_in_a_skip() -> (tempfile::TempDir, PathBuf, usize, usize, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open_collect(dir.path()).unwrap();
    let mut index = 0;
    loop {
        append_one(&wal, index);
        index += 1;
        let last = segments(dir.path()).pop().unwrap();
        let (spans, skips) = records_and_skips(&last);
        if let Some(&gap_start) = skips.last() {
            // The skip is right before the last record: the last batch made it.
            if index >= 10 && spans[spans.len() - 2].1 == gap_start {
                drop(wal);
                let buf = std::fs::read(&last).unwrap();
                let end = segment::last_nonzero_byte(&buf, 0).unwrap() + 1;
                return (dir, last, gap_start, end, index);
            }
        }
        assert!(index < 200, "no append skipped to a page boundary");
    }
}

#[test]
fn a_skip_torn_anywhere_loses_only_the_unacknowledged_batch() {
    let (base, last, gap_start, end, n) = fixture_ending_in_a_skip();
    let name = last.file_name().unwrap().to_owned();
    // From the first byte of the Resume record to the last byte of the batch.
    let boundary = gap_start.div_ceil(PAGE) * PAGE;
    for cut in (boundary..end).step_by(3) {
        for how in ["truncate", "zero"] {
            let dir = cut_copy(base.path(), &name, cut, end, how);
            let (wal, got, _) =
                open_collect(dir.path()).unwrap_or_else(|e| panic!("{how} at {cut}: {e}"));
            assert_eq!(got, (0..n - 1).collect::<Vec<_>>(), "{how} at {cut}");
            append(&wal, n - 1..n + 1);
            drop(wal);
            let (_, got, report) = open_collect(dir.path()).unwrap();
            assert!(report.torn_tail.is_none(), "{how} at {cut}");
            assert_eq!(got, (0..n + 1).collect::<Vec<_>>(), "{how} at {cut}");
        }
    }
}

#[test]
fn damage_around_a_skip_is_a_hard_error() {
    let (base, last, gap_start, _, _) = fixture_ending_in_a_skip();
    let name = last.file_name().unwrap().to_owned();
    let boundary = gap_start.div_ceil(PAGE) * PAGE;
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: [(&str, Damage); 4] = [
        // Bit rot in the skipped bytes, with the Resume record intact after them.
        (
            "a non-zero skipped byte",
            Box::new(move |b| b[boundary - 1] = 0x5a),
        ),
        // A Resume record naming another place (rewritten with a valid checksum).
        (
            "a resume naming another offset",
            Box::new(move |b| {
                let mut record = Vec::new();
                raftkv_storage::wal::record::encode_into(
                    &mut record,
                    RecordKind::Resume,
                    &(gap_start as u64 - 8).to_le_bytes(),
                );
                b[boundary..boundary + record.len()].copy_from_slice(&record);
            }),
        ),
        // The Resume record's checksum no longer matches.
        (
            "a flipped resume byte",
            Box::new(move |b| b[boundary + 10] ^= 0x01),
        ),
        // A Resume record where no bytes were skipped: moved back to the gap's start.
        (
            "a resume with nothing skipped",
            Box::new(move |b| {
                let size = raftkv_storage::wal::record::framed_size_bytes(8);
                let record: Vec<u8> = b[boundary..boundary + size].to_vec();
                b[gap_start..gap_start + size].copy_from_slice(&record);
            }),
        ),
    ];
    for (what, damage) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let path = dir.path().join(&name);
        let mut buf = std::fs::read(&path).unwrap();
        damage(&mut buf);
        std::fs::write(&path, &buf).unwrap();
        match open_collect(dir.path()) {
            Err(WalError::Corrupt { path: p, .. }) => {
                assert_eq!(p.file_name(), path.file_name(), "{what}: names the file")
            }
            Err(e) => panic!("{what} gave {e}"),
            Ok((_, got, _)) => panic!("{what} went unnoticed: {} entries", got.len()),
        }
    }
}

#[test]
fn an_unsynced_record_waits_for_the_next_synced_batch_or_the_close() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open_collect(dir.path()).unwrap();
    append(&wal, 0..3);
    let lazy = |wal: &Wal, tag: u8| {
        let (tx, rx) = mpsc::channel();
        wal.submit_blocking(Request {
            records: vec![(RecordKind::Committed, vec![tag; 12])],
            sync: false,
            done: Box::new(move |r| tx.send(r).unwrap()),
        })
        .unwrap();
        rx
    };
    let first = lazy(&wal, 1);
    assert!(
        first
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err(),
        "an unsynced record is held back, not written on its own"
    );
    append(&wal, 3..4);
    first
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("written with the next synced batch")
        .unwrap();
    let second = lazy(&wal, 2);
    drop(wal);
    second.recv().expect("written at close").unwrap();
    // Replayed in the order submitted.
    let mut seen = Vec::new();
    Wal::open(dir.path(), options(), |kind, p| {
        match kind {
            RecordKind::Entry => seen.push(format!("e{}", p[0])),
            RecordKind::Committed => seen.push(format!("c{}", p[0])),
            _ => {}
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, ["e0", "e1", "e2", "c1", "e3", "c2"]);
}
