//! Producer ids for InitProducerId: handed out from blocks whose end is persisted before
//! any id in them is used, so an id is never given twice, even across crashes (ids of a
//! block unused at a crash are skipped).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const FILE: &str = "producer-ids";
const BLOCK: i64 = 1000;

pub struct ProducerIds {
    dir: PathBuf,
    next: i64,
    block_end: i64,
}

impl ProducerIds {
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let start = match std::fs::read(dir.join(FILE)) {
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
            next: start,
            block_end: start,
        })
    }

    pub fn allocate(&mut self) -> io::Result<i64> {
        if self.next >= self.block_end {
            let end = self.next + BLOCK;
            let mut bytes = end.to_be_bytes().to_vec();
            bytes.extend_from_slice(&crc32c::crc32c(&end.to_be_bytes()).to_be_bytes());
            let temp = self.dir.join(format!("{FILE}.tmp"));
            let mut f = File::create(&temp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&temp, self.dir.join(FILE))?;
            File::open(&self.dir)?.sync_all()?;
            self.block_end = end;
        }
        let id = self.next;
        self.next += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = ProducerIds::open(dir.path()).unwrap();
        assert_eq!(ids.allocate().unwrap(), 0);
        assert_eq!(ids.allocate().unwrap(), 1);
        drop(ids);
        let mut ids = ProducerIds::open(dir.path()).unwrap();
        assert_eq!(ids.allocate().unwrap(), 1000);
    }
}
