//! Segment and index recovery: the input becomes a partition directory (one or two
//! segments, optional `.index`/`.timeindex`, clean-shutdown marker, recovery checkpoint,
//! producer snapshot), then `engine::Partition::open` recovers it.
//!
//! Input layout (big-endian; an input shorter than the 19-byte header is all log):
//! ```text
//!  0 flags u8: bit0 clean-shutdown marker, bit1 recovery checkpoint, bit2 RecoveryScope::Full,
//!              bit3 two segments, bit4 producer snapshot, bits 5-6 index interval
//!              (64, 256, 4096, 4096 bytes)
//!  1 checkpoint offset u32 (also the producer snapshot's offset)
//!  5 split u32: log bytes that go to the first segment (bit3)
//!  9 second segment's base offset u32 (bit3)
//! 13 .index length u16 | 15 .timeindex length u16 | 17 snapshot length u16
//! 19 .index bytes, .timeindex bytes, snapshot body, then the log bytes
//! ```
//! Must hold: `open` succeeds and never panics; reading every offset from the log start to
//! the log end works; an append continues at the log end and reads back; a clean close and
//! reopen serves the same log. When nothing vouches for the files (no clean marker, no
//! checkpoint past a segment, or `RecoveryScope::Full`), every served batch validates, the
//! offsets follow one another, the served bytes are a prefix of the bytes written, and a
//! second full recovery finds nothing to cut. When the marker or checkpoint vouches for
//! them (they are trusted as the engine's own synced files), a `Full` reopen must bring
//! the same guarantees.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use engine::batch::{self, BatchHeader};
use engine::limits::BATCH_BYTES_MAX;
use engine::{AppendWait, LogConfig, Partition, RecoveryScope};

const HEADER_BYTES: usize = 19;
/// Reads per check; each returns at least one batch, so this bounds the walk.
const READS_MAX: usize = 100_000;

struct Layout<'a> {
    clean: bool,
    checkpoint: Option<i64>,
    full: bool,
    /// (split position in the log, base offset of the second segment)
    second: Option<(usize, i64)>,
    snapshot: Option<(i64, &'a [u8])>,
    index_interval_bytes: u64,
    index: &'a [u8],
    time_index: &'a [u8],
    log: &'a [u8],
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

fn parse(data: &[u8]) -> Layout<'_> {
    let all_log = Layout {
        clean: false,
        checkpoint: None,
        full: false,
        second: None,
        snapshot: None,
        index_interval_bytes: 4096,
        index: &[],
        time_index: &[],
        log: data,
    };
    if data.len() < HEADER_BYTES {
        return all_log;
    }
    let flags = data[0];
    let offset = i64::from(be_u32(data, 1));
    let split = be_u32(data, 5) as usize;
    let second_base = i64::from(be_u32(data, 9));
    let mut rest = &data[HEADER_BYTES..];
    let mut take = |n: usize| {
        let n = n.min(rest.len());
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head
    };
    let index = take(be_u16(data, 13));
    let time_index = take(be_u16(data, 15));
    let snapshot = take(be_u16(data, 17));
    Layout {
        clean: flags & 0x01 != 0,
        checkpoint: (flags & 0x02 != 0).then_some(offset),
        full: flags & 0x04 != 0,
        // Base 0 would be the first segment's own name.
        second: (flags & 0x08 != 0 && second_base > 0)
            .then_some((split.min(rest.len()), second_base)),
        snapshot: (flags & 0x10 != 0).then_some((offset, snapshot)),
        index_interval_bytes: [64, 256, 4096, 4096][usize::from((flags >> 5) & 0x03)],
        index,
        time_index,
        log: rest,
    }
}

fn stem(base: i64) -> String {
    format!("{base:020}")
}

fn write_dir(dir: &Path, l: &Layout<'_>) -> std::io::Result<()> {
    let (first_log, second) = match l.second {
        Some((split, base)) => (&l.log[..split], Some((&l.log[split..], base))),
        None => (l.log, None),
    };
    std::fs::write(dir.join(format!("{}.log", stem(0))), first_log)?;
    std::fs::write(dir.join(format!("{}.index", stem(0))), l.index)?;
    std::fs::write(dir.join(format!("{}.timeindex", stem(0))), l.time_index)?;
    if let Some((log, base)) = second {
        std::fs::write(dir.join(format!("{}.log", stem(base))), log)?;
    }
    if l.clean {
        std::fs::write(dir.join("clean-shutdown"), [])?;
    }
    if let Some(offset) = l.checkpoint {
        // The engine's checkpoint format: offset, CRC-32C of the offset.
        let mut b = offset.to_be_bytes().to_vec();
        b.extend_from_slice(&crc32c::crc32c(&offset.to_be_bytes()).to_be_bytes());
        std::fs::write(dir.join("recovery-checkpoint"), b)?;
    }
    if let Some((offset, body)) = l.snapshot {
        // The engine's snapshot format: offset, CRC-32C of offset and body, body.
        let mut b = offset.to_be_bytes().to_vec();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&offset.to_be_bytes()), body);
        b.extend_from_slice(&crc.to_be_bytes());
        b.extend_from_slice(body);
        std::fs::write(dir.join("producer-snapshot"), b)?;
    }
    Ok(())
}

/// Whether anything vouches for the files, so that recovery may trust them unchecked.
fn vouched(l: &Layout<'_>) -> bool {
    if l.full {
        return false;
    }
    l.clean
        || l.second
            .zip(l.checkpoint)
            .is_some_and(|((_, base), checkpoint)| base > 0 && base <= checkpoint)
}

thread_local! {
    static RUNTIME: compio::runtime::Runtime =
        compio::runtime::Runtime::new().expect("a compio runtime for the fuzz target");
    static DIR: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

fn scratch_dir() -> PathBuf {
    DIR.with(|d| {
        d.borrow_mut()
            .get_or_insert_with(|| {
                let base = if Path::new("/dev/shm").is_dir() {
                    PathBuf::from("/dev/shm")
                } else {
                    std::env::temp_dir()
                };
                base.join(format!("klog-fuzz-recovery-{}", std::process::id()))
            })
            .clone()
    })
}

pub fn run(data: &[u8]) {
    let layout = parse(data);
    let root = scratch_dir();
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("t-0");
    std::fs::create_dir_all(&dir).expect("scratch directory");
    write_dir(&dir, &layout).expect("writing the segment files");
    RUNTIME.with(|rt| rt.block_on(check(&dir, &layout)));
    let _ = std::fs::remove_dir_all(&root);
}

fn config(l: &Layout<'_>, scope: RecoveryScope) -> LogConfig {
    LogConfig {
        index_interval_bytes: l.index_interval_bytes,
        recovery_scope: scope,
        ..LogConfig::default()
    }
}

async fn check(dir: &Path, l: &Layout<'_>) {
    let scope = if l.full {
        RecoveryScope::Full
    } else {
        RecoveryScope::SinceCheckpoint
    };
    let opened = Partition::open(dir, config(l, scope)).await;
    let (p, report) = match opened {
        Ok(x) => x,
        Err(e) => panic!("open failed: {e}"),
    };
    let written = l.log.to_vec();
    let strict = !vouched(l);
    let served = read_all(&p, strict).await;
    if strict {
        check_served(&served, Some(&written), &p);
    }
    let before = p.offsets();
    let fresh = batch::build::build_batch(&[b"after recovery", b"x"], 1_700_000_000_000);
    let info = match p.append(fresh.clone(), AppendWait::Written).await {
        Ok(info) => info,
        Err(e) => panic!("append after recovery failed: {e} ({report:?})"),
    };
    assert_eq!(
        info.base_offset, before.log_end_offset,
        "append continues at the end"
    );
    let mut expected = fresh.clone();
    batch::set_base_offset(&mut expected, info.base_offset);
    match p.read(info.base_offset, 1).await {
        Ok(got) => assert_eq!(got, expected, "the appended batch reads back"),
        Err(e) => panic!("reading the appended batch failed: {e}"),
    }
    if let Err(e) = p.close().await {
        panic!("close failed: {e}");
    }
    drop(p);

    // A clean close vouches for the files: the reopen trusts them and serves the same log.
    let (p, _) = match Partition::open(dir, config(l, RecoveryScope::SinceCheckpoint)).await {
        Ok(x) => x,
        Err(e) => panic!("reopen after a clean close failed: {e}"),
    };
    assert_eq!(p.offsets().log_end_offset, info.last_offset + 1);
    let after_close = read_all(&p, strict).await;
    if strict {
        let mut with_fresh = served.clone();
        with_fresh.extend_from_slice(&expected);
        assert_eq!(
            after_close, with_fresh,
            "a clean reopen serves the same bytes"
        );
    }
    if let Err(e) = p.close().await {
        panic!("second close failed: {e}");
    }
    drop(p);

    // Full recovery re-validates everything: after a strict recovery nothing is left to
    // cut; after a trusting one, it must now give every strict guarantee.
    let (p, report) = match Partition::open(dir, config(l, RecoveryScope::Full)).await {
        Ok(x) => x,
        Err(e) => panic!("full reopen failed: {e}"),
    };
    if strict {
        assert_eq!(
            report.bytes_truncated, 0,
            "a second recovery cut bytes: {report:?}"
        );
        assert_eq!(p.offsets().log_end_offset, info.last_offset + 1);
    }
    let full = read_all(&p, true).await;
    check_served(&full, None, &p);
    if strict {
        assert_eq!(full, after_close, "a full reopen serves the same bytes");
    }
    let _ = p.close().await;
}

/// Reads the whole log, batch by batch from the log start. When `strict`, each read must
/// succeed; otherwise (files trusted unchecked) a read may fail but must not panic.
async fn read_all(p: &Partition, strict: bool) -> Vec<u8> {
    let offsets = p.offsets();
    let mut out = Vec::new();
    let mut next = offsets.log_start_offset;
    for _ in 0..READS_MAX {
        if next >= offsets.log_end_offset {
            return out;
        }
        let bytes = match p.read(next, 64 * 1024).await {
            Ok(b) => b,
            Err(e) if strict => panic!("read at {next} failed: {e}"),
            Err(_) => return out,
        };
        let mut at = 0;
        let mut progressed = false;
        while at < bytes.len() {
            let Ok(h) = BatchHeader::parse(&bytes[at..]) else {
                break;
            };
            let total = h.declared_total_bytes() as usize;
            if strict {
                assert_eq!(
                    h.base_offset, next,
                    "served batches must follow one another"
                );
            }
            if h.last_offset() < next {
                // Only a trusted, damaged log can go backwards.
                assert!(!strict);
                return out;
            }
            out.extend_from_slice(&bytes[at..at + total]);
            next = h.last_offset().saturating_add(1);
            at += total;
            progressed = true;
        }
        if !progressed {
            assert!(!strict, "a read at {next} returned no whole batch");
            return out;
        }
    }
    assert!(!strict, "the log did not end after {READS_MAX} reads");
    out
}

/// What a strict recovery guarantees about the served bytes; `written`, when given, is
/// what the log files held before it.
fn check_served(served: &[u8], written: Option<&[u8]>, p: &Partition) {
    let offsets = p.offsets();
    let mut at = 0;
    let mut next = offsets.log_start_offset;
    while at < served.len() {
        let h = BatchHeader::parse(&served[at..]).expect("a served batch header");
        let total = h.declared_total_bytes() as usize;
        let bytes = &served[at..at + total];
        match batch::validate(bytes, BATCH_BYTES_MAX) {
            Ok(v) => crate::batch_checks::valid_batch_invariants(bytes, &v),
            Err(e) => panic!("recovery served a batch that fails validation: {e}"),
        }
        assert_eq!(h.base_offset, next);
        next = h.last_offset() + 1;
        at += total;
    }
    assert_eq!(
        next, offsets.log_end_offset,
        "the log end follows the last batch"
    );
    if let Some(written) = written {
        assert!(
            written.starts_with(served),
            "recovery served bytes that were not written ({} served)",
            served.len()
        );
    }
}
