//! The record batch codecs, for the cleaner: it reads the records of a compressed batch
//! and writes back what stays, compressed the same way. Each format is what Kafka
//! writes: gzip, Snappy in snappy-java's framing (raw Snappy read too, as Kafka's own
//! reader accepts it), the LZ4 frame format with independent blocks, and zstd frames.
//! Decompression stops at a caller's bound: a batch's records never take more memory
//! than that, whatever the compressed bytes claim. (The `kafka-protocol` crate, which
//! the tests use, has these codecs too, but inflates without a bound.)

use std::io::{Read, Write};

use crate::batch::Compression;
use crate::error::BatchError;

/// snappy-java's stream header: magic, version 1, compatible version 1.
const SNAPPY_JAVA_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// Largest zstd window accepted (16 MiB; producers' default levels use far less).
const ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// Uncompressed bytes per snappy-java block.
const SNAPPY_JAVA_BLOCK: usize = 32 * 1024;

fn failed(reason: &'static str) -> BatchError {
    BatchError::Codec { reason }
}

/// Reads at most `limit` bytes from `reader`; more is an error.
fn read_bounded(
    reader: impl Read,
    limit: usize,
    reason: &'static str,
) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| failed(reason))?;
    if out.len() > limit {
        return Err(failed("records decompress to more than the bound"));
    }
    Ok(out)
}

/// The uncompressed records of a batch body compressed with `codec`, at most `limit`
/// bytes of them.
pub(crate) fn decompress(
    codec: Compression,
    data: &[u8],
    limit: usize,
) -> Result<Vec<u8>, BatchError> {
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            read_bounded(flate2::read::GzDecoder::new(data), limit, "bad gzip data")
        }
        Compression::Lz4 => {
            let decoder = lz4::Decoder::new(data).map_err(|_| failed("bad lz4 frame"))?;
            read_bounded(decoder, limit, "bad lz4 frame")
        }
        Compression::Zstd => {
            let mut decoder =
                zstd::stream::read::Decoder::new(data).map_err(|_| failed("bad zstd frame"))?;
            // A frame may ask for a window of up to 2 GiB before writing a byte.
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|_| failed("bad zstd frame"))?;
            read_bounded(decoder, limit, "bad zstd frame")
        }

        Compression::Snappy => match data.strip_prefix(&SNAPPY_JAVA_HEADER[..]) {
            Some(mut blocks) => {
                let mut out = Vec::new();
                while !blocks.is_empty() {
                    let (len, rest) = blocks
                        .split_first_chunk::<4>()
                        .ok_or(failed("torn snappy-java block length"))?;
                    let len = u32::from_be_bytes(*len) as usize;
                    let block = rest.get(..len).ok_or(failed("torn snappy-java block"))?;
                    snappy_raw(block, limit - out.len(), &mut out)?;
                    blocks = &rest[len..];
                }
                Ok(out)
            }
            None => {
                let mut out = Vec::new();
                snappy_raw(data, limit, &mut out)?;
                Ok(out)
            }
        },
    }
}

/// Appends one raw Snappy block to `out`, refusing one that claims more than `room`.
fn snappy_raw(block: &[u8], room: usize, out: &mut Vec<u8>) -> Result<(), BatchError> {
    let len = snap::raw::decompress_len(block).map_err(|_| failed("bad snappy block"))?;
    if len > room {
        return Err(failed("records decompress to more than the bound"));
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|_| failed("bad snappy block"))?;
    Ok(())
}

/// `records` compressed with `codec`, in the format `like` (the batch's old body) was
/// in where the codec has two (Snappy framed or raw).
pub(crate) fn compress(
    codec: Compression,
    records: &[u8],
    like: &[u8],
) -> Result<Vec<u8>, BatchError> {
    match codec {
        Compression::None => Ok(records.to_vec()),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(records).map_err(|_| failed("gzip failed"))?;
            e.finish().map_err(|_| failed("gzip failed"))
        }
        Compression::Lz4 => {
            let mut e = lz4::EncoderBuilder::new()
                .block_mode(lz4::BlockMode::Independent)
                .build(Vec::new())
                .map_err(|_| failed("lz4 failed"))?;
            e.write_all(records).map_err(|_| failed("lz4 failed"))?;
            let (out, result) = e.finish();
            result.map_err(|_| failed("lz4 failed"))?;
            Ok(out)
        }
        Compression::Zstd => zstd::bulk::compress(records, 3).map_err(|_| failed("zstd failed")),
        Compression::Snappy if like.starts_with(SNAPPY_JAVA_HEADER) => {
            let mut out = SNAPPY_JAVA_HEADER.to_vec();
            let mut encoder = snap::raw::Encoder::new();
            for block in records.chunks(SNAPPY_JAVA_BLOCK) {
                let compressed = encoder
                    .compress_vec(block)
                    .map_err(|_| failed("snappy failed"))?;
                out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            Ok(out)
        }
        Compression::Snappy => snap::raw::Encoder::new()
            .compress_vec(records)
            .map_err(|_| failed("snappy failed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_and_bounds_what_it_inflates() {
        let records: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect();
        let framed_snappy = [&SNAPPY_JAVA_HEADER[..], b""].concat();
        for (codec, like) in [
            (Compression::Gzip, &b""[..]),
            (Compression::Snappy, &b""[..]),
            (Compression::Snappy, &framed_snappy[..]),
            (Compression::Lz4, &b""[..]),
            (Compression::Zstd, &b""[..]),
        ] {
            let packed = compress(codec, &records, like).unwrap();
            assert!(packed.len() < records.len(), "{codec:?}");
            assert_eq!(packed.starts_with(SNAPPY_JAVA_HEADER), !like.is_empty());
            assert_eq!(
                decompress(codec, &packed, records.len()).unwrap(),
                records,
                "{codec:?}"
            );
            assert!(
                decompress(codec, &packed, records.len() - 1).is_err(),
                "{codec:?} bound"
            );
            // A torn body never passes for the records (the LZ4 reader hands back what it
            // had; the cleaner then finds the records do not frame).
            assert_ne!(
                decompress(codec, &packed[..packed.len() / 2], 1 << 30).ok(),
                Some(records.clone()),
                "{codec:?} torn"
            );
        }
    }
}
