//! Producer ids for InitProducerId. Ids come in blocks from the controller (Kafka's
//! AllocateProducerIds), so two brokers never hand the same id to two producers; the end
//! of each block this broker took is also persisted here before any id in it is used, so
//! that ids handed out before a controller existed (or at any time) are never reused:
//! each block asks the controller for ids at or past that end.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const FILE: &str = "producer-ids";

pub struct ProducerIds {
    dir: PathBuf,
    next: i64,
    block_end: i64,
    /// Every id below this may have been handed out by this broker.
    floor: i64,
}

impl ProducerIds {
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let floor = match std::fs::read(dir.join(FILE)) {
            Ok(bytes) if bytes.len() == 12 => {
                let end = i64::from_be_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
                let crc = u32::from_be_bytes(bytes[8..12].try_into().unwrap_or([0; 4]));
                if crc32c::crc32c(&bytes[..8]) != crc || end < 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "producer-ids file is damaged",
                    ));
                }
                end
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "producer-ids file has the wrong size",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(Self {
            dir: dir.to_owned(),
            next: floor,
            block_end: floor,
            floor,
        })
    }

    /// The next id of the current block, if one is left.
    pub fn take(&mut self) -> Option<i64> {
        (self.next < self.block_end).then(|| {
            let id = self.next;
            self.next += 1;
            id
        })
    }

    /// Where the next block must start at the earliest.
    pub fn floor(&self) -> i64 {
        self.floor
    }

    /// Takes `start..end` (a block the controller committed to this broker) as the
    /// current block, once its end is on disk.
    pub fn add_block(&mut self, start: i64, end: i64) -> io::Result<()> {
        if start < self.floor || end <= start {
            return Err(io::Error::other(format!(
                "producer id block {start}..{end} is below this broker's floor {}",
                self.floor
            )));
        }
        let mut bytes = end.to_be_bytes().to_vec();
        bytes.extend_from_slice(&crc32c::crc32c(&end.to_be_bytes()).to_be_bytes());
        let temp = self.dir.join(format!("{FILE}.tmp"));
        let mut f = File::create(&temp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&temp, self.dir.join(FILE))?;
        File::open(&self.dir)?.sync_all()?;
        self.floor = end;
        self.next = start;
        self.block_end = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_blocks_should_hand_out_their_ids_and_keep_the_floor_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = ProducerIds::open(dir.path()).unwrap();
        assert_eq!(ids.take(), None, "no block yet");
        ids.add_block(2000, 2002).unwrap();
        assert_eq!(
            (ids.take(), ids.take(), ids.take()),
            (Some(2000), Some(2001), None)
        );
        drop(ids);
        let mut ids = ProducerIds::open(dir.path()).unwrap();
        assert_eq!(ids.floor(), 2002);
        assert_eq!(ids.take(), None);
        assert!(ids.add_block(1000, 2000).is_err(), "below the floor");
    }
}
