//! The Fetch response (v4-11), written by hand as a list of pieces: encoded bytes from
//! memory, and file ranges that go from the page cache to the socket by splice, so the
//! record bytes never enter user space. Its encoding is checked against the
//! `kafka-protocol` crate's by a property test below.

use std::rc::Rc;

use bytes::{BufMut, BytesMut};
use engine::SegmentFiles;

/// A file the records come from: a local segment (held, so retention cannot unlink it
/// mid-send) or a descriptor duplicated by the core that owns the partition.
#[derive(Debug, Clone)]
pub enum SendFile {
    Local(Rc<SegmentFiles>),
    Owned(Rc<compio::fs::File>),
}

impl SendFile {
    pub fn file(&self) -> &compio::fs::File {
        match self {
            SendFile::Local(files) => files.log_file(),
            SendFile::Owned(file) => file,
        }
    }
}

/// One piece of a response on the wire.
#[derive(Debug, Clone)]
pub enum Piece {
    Bytes(Vec<u8>),
    File {
        file: SendFile,
        position: u64,
        len: u64,
    },
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
pub struct PartitionData {
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub records: Vec<Piece>,
}

#[derive(Debug, Clone)]
pub struct TopicData {
    pub name: String,
    pub partitions: Vec<PartitionData>,
}

/// Builds a response out of pieces, keeping small fields in one buffer until a file
/// range interrupts it.
struct Writer {
    pieces: Vec<Piece>,
    buf: BytesMut,
    total: u64,
}

impl Writer {
    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.total += self.buf.len() as u64;
            self.pieces.push(Piece::Bytes(self.buf.split().to_vec()));
        }
    }

    fn push(&mut self, piece: Piece) {
        match piece {
            Piece::Bytes(b) => self.buf.put_slice(&b),
            file => {
                self.flush();
                self.total += file.len();
                self.pieces.push(file);
            }
        }
    }
}

/// Encodes a whole Fetch response frame (length prefix, header v0, body) for `version`
/// 4..=11.
pub fn encode(
    version: i16,
    correlation_id: i32,
    error_code: i16,
    topics: Vec<TopicData>,
) -> Vec<Piece> {
    debug_assert!((4..=11).contains(&version));
    let mut w = Writer {
        pieces: Vec::new(),
        buf: BytesMut::with_capacity(256),
        total: 0,
    };
    w.buf.put_i32(0); // frame length, patched at the end
    w.buf.put_i32(correlation_id);
    w.buf.put_i32(0); // throttle_time_ms
    if version >= 7 {
        w.buf.put_i16(error_code);
        w.buf.put_i32(0); // session_id: no fetch sessions
    }
    w.buf.put_i32(topics.len() as i32);
    for topic in topics {
        w.buf.put_i16(topic.name.len() as i16);
        w.buf.put_slice(topic.name.as_bytes());
        w.buf.put_i32(topic.partitions.len() as i32);
        for p in topic.partitions {
            w.buf.put_i32(p.partition);
            w.buf.put_i16(p.error_code);
            w.buf.put_i64(p.high_watermark);
            w.buf.put_i64(p.last_stable_offset);
            if version >= 5 {
                w.buf.put_i64(p.log_start_offset);
            }
            w.buf.put_i32(-1); // aborted_transactions: null (no transactions)
            if version >= 11 {
                w.buf.put_i32(-1); // preferred_read_replica
            }
            let records_len: u64 = p.records.iter().map(Piece::len).sum();
            w.buf.put_i32(records_len as i32);
            for piece in p.records {
                w.push(piece);
            }
        }
    }
    w.flush();
    let frame_len = (w.total - 4) as i32;
    if let Some(Piece::Bytes(first)) = w.pieces.first_mut() {
        first[..4].copy_from_slice(&frame_len.to_be_bytes());
    }
    w.pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::messages::fetch_response::{
        FetchResponse, FetchableTopicResponse, PartitionData as CratePartition,
    };
    use kafka_protocol::messages::{BrokerId, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use proptest::prelude::*;

    fn flatten(pieces: &[Piece]) -> Vec<u8> {
        pieces
            .iter()
            .flat_map(|p| match p {
                Piece::Bytes(b) => b.clone(),
                Piece::File { .. } => unreachable!("tests use in-memory records"),
            })
            .collect()
    }

    fn crate_encoding(
        version: i16,
        correlation_id: i32,
        error_code: i16,
        topics: &[TopicData],
    ) -> Vec<u8> {
        let response = FetchResponse::default()
            .with_error_code(error_code)
            .with_responses(
                topics
                    .iter()
                    .map(|t| {
                        FetchableTopicResponse::default()
                            .with_topic(TopicName(StrBytes::from_string(t.name.clone())))
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        CratePartition::default()
                                            .with_partition_index(p.partition)
                                            .with_error_code(p.error_code)
                                            .with_high_watermark(p.high_watermark)
                                            .with_last_stable_offset(p.last_stable_offset)
                                            .with_log_start_offset(p.log_start_offset)
                                            .with_aborted_transactions(None)
                                            .with_preferred_read_replica(BrokerId(-1))
                                            .with_records(Some(Bytes::from(flatten(&p.records))))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut buf, 0)
            .unwrap();
        response.encode(&mut buf, version).unwrap();
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        buf.to_vec()
    }

    fn partition() -> impl Strategy<Value = PartitionData> {
        (
            any::<i32>(),
            any::<i16>(),
            any::<i64>(),
            any::<i64>(),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..3),
        )
            .prop_map(|(partition, error_code, hw, lso, chunks)| PartitionData {
                partition,
                error_code,
                high_watermark: hw,
                last_stable_offset: hw,
                log_start_offset: lso,
                records: chunks.into_iter().map(Piece::Bytes).collect(),
            })
    }

    proptest! {
        #[test]
        fn hand_written_fetch_response_matches_the_crate(
            version in 4i16..=11,
            correlation_id in any::<i32>(),
            error_code in any::<i16>(),
            topics in proptest::collection::vec(("[a-z._-]{1,20}", proptest::collection::vec(partition(), 0..4)), 0..4),
        ) {
            let topics: Vec<TopicData> = topics.into_iter().map(|(name, partitions)| TopicData { name, partitions }).collect();
            // v4-6 have no top-level error code.
            let error_code = if version >= 7 { error_code } else { 0 };
            let ours = flatten(&encode(version, correlation_id, error_code, topics.clone()));
            prop_assert_eq!(ours, crate_encoding(version, correlation_id, error_code, &topics));
        }
    }
}
