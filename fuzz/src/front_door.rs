//! The request front door: the input is what a client writes on one connection, frames
//! back to back (`i32` length, then the frame). Each frame goes through what
//! `server::kafka::connection` does with it — the length checks, `protocol::decode_frame`
//! (API and version, header, `request_bounds`, the whole body) — and then through the
//! handler-level checks that need no broker: topic names, produce records
//! (`produce::check_records`, then `engine::batch::validate` as an append would),
//! CreateTopics entries and the engine config they map to.
//!
//! Memory: while one frame is decoded, no single allocation may exceed
//! [`ALLOCATION_PER_FRAME_BYTE_MAX`] times the frame's size (plus a small constant), and
//! the bytes live at once no more than [`LIVE_PER_FRAME_BYTE_MAX`] times it nor
//! [`DECODED_FRAME_BYTES_MAX`]. `FUZZ_REPORT_ALLOC=1` prints both for each frame.

use engine::batch;
use engine::limits::BATCH_BYTES_MAX;
use kafka_protocol::messages::ApiKey;
use server::config::BrokerConfig;
use server::kafka::handlers;
use server::kafka::protocol::{self, DecodedRequest, Frame, RequestBody};

use crate::alloc_track;

/// Frames read from one input; a real connection is bounded by time instead.
const FRAMES_PER_INPUT_MAX: usize = 64;
/// Largest single allocation allowed per byte of frame while it is decoded and checked.
pub const ALLOCATION_PER_FRAME_BYTE_MAX: usize = 64;
/// Most bytes live at once allowed per byte of frame.
pub const LIVE_PER_FRAME_BYTE_MAX: usize = 128;
/// Most bytes live at once while any one frame is decoded, whatever its size: the
/// element cap of `request_bounds` times the largest decoded element (~200 bytes).
pub const DECODED_FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Allowance for fixed-size allocations (headers, error strings, formatting).
const ALLOCATION_SLACK_BYTES: usize = 64 * 1024;

pub fn run(data: &[u8]) {
    let config = BrokerConfig::default();
    let mut rest = data;
    for _ in 0..FRAMES_PER_INPUT_MAX {
        let Some(len_bytes) = rest.first_chunk::<4>() else {
            return;
        };
        // The connection closes on a bad length, or waits for bytes that never come.
        let Ok(len) = protocol::check_frame_length(
            i32::from_be_bytes(*len_bytes),
            config.socket_request_max_bytes,
        ) else {
            return;
        };
        rest = &rest[4..];
        let Some(key) = rest.first_chunk::<2>() else {
            return;
        };
        if protocol::check_frame_length_for_api(len, i16::from_be_bytes(*key)).is_err() {
            return;
        }
        let Some(frame) = rest.get(..len) else {
            return;
        };
        rest = &rest[len..];
        let frame = frame.to_vec();
        let live_before = alloc_track::live();
        alloc_track::reset();
        let outcome = protocol::decode_frame(frame);
        let keep_going = match &outcome {
            Ok(Frame::ApiVersionsUnsupported { correlation_id }) => {
                let answer = handlers::api_versions::unsupported(*correlation_id);
                assert!(answer.is_ok(), "the ApiVersions fallback must encode");
                true
            }
            Ok(Frame::Request(request)) => {
                check_request(request, &config);
                true
            }
            // Any error closes the connection: nothing after it is read.
            Err(_) => false,
        };
        drop(outcome);
        let largest = alloc_track::largest();
        let peak = alloc_track::peak_live().saturating_sub(live_before);
        if report_allocations() {
            eprintln!("frame of {len} bytes: largest allocation {largest}, peak live {peak}");
        }
        assert!(
            largest <= ALLOCATION_SLACK_BYTES + ALLOCATION_PER_FRAME_BYTE_MAX * len,
            "a {len}-byte frame made a single allocation of {largest} bytes"
        );
        assert!(
            peak <= ALLOCATION_SLACK_BYTES
                + (LIVE_PER_FRAME_BYTE_MAX * len).min(DECODED_FRAME_BYTES_MAX),
            "a {len}-byte frame had {peak} bytes live at once"
        );
        if !keep_going {
            return;
        }
    }
}

/// `FUZZ_REPORT_ALLOC=1`: print each frame's allocations (to size the bounds above).
fn report_allocations() -> bool {
    static REPORT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REPORT.get_or_init(|| std::env::var_os("FUZZ_REPORT_ALLOC").is_some())
}

/// What the handlers check without a broker, and the invariants of what they return.
fn check_request(request: &DecodedRequest, config: &BrokerConfig) {
    assert!(
        protocol::accepted(request.key, request.version),
        "decode_frame let through {:?} v{}",
        request.key,
        request.version
    );
    match &request.body {
        RequestBody::Produce(req) => {
            assert_eq!(request.key, ApiKey::Produce);
            for topic in &req.topic_data {
                for pd in &topic.partition_data {
                    let _ = engine::TopicPartition::new(topic.name.0.as_str(), pd.index);
                    let records = pd.records.as_deref().unwrap_or_default();
                    let checked =
                        handlers::produce::check_records(records, config.message_max_bytes);
                    if checked.is_err() {
                        continue;
                    }
                    assert!(records.len() <= config.message_max_bytes);
                    // What `Partition::append` runs first.
                    if let Ok(header) = batch::validate(records, config.message_max_bytes) {
                        crate::batch_checks::valid_batch_invariants(records, &header);
                    }
                }
            }
        }
        RequestBody::CreateTopics(req) => {
            for topic in &req.topics {
                let Ok((meta, _)) = handlers::admin::requested_topic(
                    topic,
                    config.num_partitions,
                    config.default_replication_factor,
                ) else {
                    continue;
                };
                if server::control::topics::validate(&meta).is_ok() {
                    // A topic the registry accepts must map to an engine config that opens.
                    let log = server::control::topics::log_config_for(&meta, &config.log_config());
                    assert!(
                        log.validate().is_ok(),
                        "topic configs {:?} gave an invalid log config {log:?}",
                        meta.configs
                    );
                    assert!(log.batch_bytes_max <= BATCH_BYTES_MAX);
                }
            }
        }
        RequestBody::Fetch(req) => {
            for topic in &req.topics {
                for p in &topic.partitions {
                    let _ = engine::TopicPartition::new(topic.topic.0.as_str(), p.partition);
                }
            }
        }
        RequestBody::Metadata(req) => {
            for topic in req.topics.iter().flatten() {
                if let Some(name) = &topic.name {
                    let _ = engine::data_dir::validate_topic_name(name.0.as_str());
                }
            }
        }
        RequestBody::DeleteTopics(req) => {
            for name in &req.topic_names {
                let _ = engine::data_dir::validate_topic_name(name.0.as_str());
            }
        }
        _ => {}
    }
}
