//! Record framing of the write-ahead log: what one record looks like on disk.
//!
//! ```text
//! offset 0  len    u32 LE   payload length in bytes, never 0 (0 marks the end of data)
//! offset 4  crc    u32 LE   CRC32C over kind and payload
//! offset 8  kind   u8       RecordKind
//! offset 9  payload         len bytes
//!           padding         zeros up to the next multiple of 8
//! ```
//!
//! Records are packed one after another, except where the writer skipped to the next
//! page (`PAGE_SIZE_BYTES`): then the bytes from the end of the last record to the page
//! boundary are zeros, never written, and the page starts with a `Resume` record whose
//! payload is the offset where those zeros start (segment.rs checks both).
//!
//! This module owns encoding and decoding of single records and nothing else: it never
//! decides what a damaged record means for the log (segment.rs does).

/// Bytes before the payload: len, crc, kind.
pub const HEADER_SIZE_BYTES: usize = 9;
/// Records start at multiples of this; it keeps a header inside one 512-byte sector.
pub const ALIGN_BYTES: usize = 8;

/// The page-cache page: an fdatasync writes every page a batch dirtied, whole.
pub const PAGE_SIZE_BYTES: u64 = 4096;

/// What a record holds. The numbers are on disk: never reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A Raft log entry: index (u64 LE) then the encoded entry.
    Entry = 1,
    /// The vote, encoded.
    Vote = 2,
    /// The committed log id, encoded.
    Committed = 3,
    /// Entries with index >= the u64 LE payload are gone.
    Truncate = 4,
    /// Entries up to the encoded log id are purged: index (u64 LE) then the encoded log id.
    Purge = 5,
    /// First record of every segment: the state an earlier, deleted segment may have held.
    SegmentHeader = 6,
    /// The writer skipped here from the u64 LE offset in the payload, leaving zeros
    /// between. Framing only: written and read by the WAL itself, never shown to callers.
    Resume = 7,
}

impl RecordKind {
    pub fn from_u8(byte: u8) -> Option<RecordKind> {
        Some(match byte {
            1 => RecordKind::Entry,
            2 => RecordKind::Vote,
            3 => RecordKind::Committed,
            4 => RecordKind::Truncate,
            5 => RecordKind::Purge,
            6 => RecordKind::SegmentHeader,
            7 => RecordKind::Resume,
            _ => return None,
        })
    }
}

/// Size on disk of a record with `payload_size_bytes` of payload, padding included.
pub fn framed_size_bytes(payload_size_bytes: usize) -> usize {
    (HEADER_SIZE_BYTES + payload_size_bytes).div_ceil(ALIGN_BYTES) * ALIGN_BYTES
}

/// Appends one framed record to `out`. `out.len()` must be aligned on entry and is on exit.
pub fn encode_into(out: &mut Vec<u8>, kind: RecordKind, payload: &[u8]) {
    debug_assert_eq!(out.len() % ALIGN_BYTES, 0);
    assert!(!payload.is_empty(), "a record payload is never empty");
    let len = u32::try_from(payload.len()).expect("record payload fits u32");
    let mut crc = crc32c::crc32c(&[kind as u8]);
    crc = crc32c::crc32c_append(crc, payload);
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(payload);
    out.resize(start + framed_size_bytes(payload.len()), 0);
}

/// What is found at one offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole record; the next one starts at `next_offset`.
    Record {
        kind: RecordKind,
        payload: &'a [u8],
        next_offset: usize,
    },
    /// A zero length word (or no room for a header): no data was written here.
    End,
    /// Something that is not a whole, valid record.
    Bad { reason: BadRecord },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRecord {
    /// The length runs past the end of the file.
    PastEnd,
    /// The length is larger than any record raftkv writes.
    TooLarge,
    /// The checksum does not match.
    Checksum,
    /// The kind byte is unknown.
    UnknownKind,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadRecord::PastEnd => "record runs past the end of the file",
            BadRecord::TooLarge => "record length is larger than the maximum",
            BadRecord::Checksum => "record checksum mismatch",
            BadRecord::UnknownKind => "unknown record kind",
        })
    }
}

/// Decodes the record at `offset` of `buf`. Never panics, whatever `buf` holds.
pub fn decode(buf: &[u8], offset: usize, max_payload_size_bytes: usize) -> Decoded<'_> {
    let Some(header) = buf.get(offset..offset.saturating_add(HEADER_SIZE_BYTES)) else {
        // No room for a header: whatever follows cannot be a record.
        return Decoded::End;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len == 0 {
        return Decoded::End;
    }
    if len > max_payload_size_bytes {
        return Decoded::Bad {
            reason: BadRecord::TooLarge,
        };
    }
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let payload_start = offset + HEADER_SIZE_BYTES;
    let Some(payload) = buf.get(payload_start..payload_start + len) else {
        return Decoded::Bad {
            reason: BadRecord::PastEnd,
        };
    };
    let mut actual = crc32c::crc32c(&header[8..9]);
    actual = crc32c::crc32c_append(actual, payload);
    if actual != crc {
        return Decoded::Bad {
            reason: BadRecord::Checksum,
        };
    }
    let Some(kind) = RecordKind::from_u8(header[8]) else {
        return Decoded::Bad {
            reason: BadRecord::UnknownKind,
        };
    };
    Decoded::Record {
        kind,
        payload,
        next_offset: offset + framed_size_bytes(len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_alignment() {
        let mut out = Vec::new();
        encode_into(&mut out, RecordKind::Entry, b"hello");
        encode_into(&mut out, RecordKind::Vote, &[7u8; 23]);
        assert_eq!(out.len() % ALIGN_BYTES, 0);
        let Decoded::Record {
            kind,
            payload,
            next_offset,
        } = decode(&out, 0, 1 << 20)
        else {
            panic!("first record must decode");
        };
        assert_eq!((kind, payload), (RecordKind::Entry, &b"hello"[..]));
        let Decoded::Record { kind, payload, .. } = decode(&out, next_offset, 1 << 20) else {
            panic!("second record must decode");
        };
        assert_eq!((kind, payload.len()), (RecordKind::Vote, 23));
        assert_eq!(decode(&out, out.len(), 1 << 20), Decoded::End);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let mut out = Vec::new();
        encode_into(&mut out, RecordKind::Entry, b"some payload bytes");
        for byte in 0..HEADER_SIZE_BYTES + 18 {
            for bit in 0..8 {
                let mut damaged = out.clone();
                damaged[byte] ^= 1 << bit;
                match decode(&damaged, 0, 1 << 20) {
                    Decoded::Record { .. } => {
                        panic!("flip at byte {byte} bit {bit} went unnoticed")
                    }
                    Decoded::End | Decoded::Bad { .. } => {}
                }
            }
        }
    }
}
