//! ApiVersions: the list in `protocol::SUPPORTED_APIS`, nothing more.

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::protocol::Encodable;

use super::Request;
use crate::kafka::fetch_response::Piece;
use crate::kafka::protocol::{DecodeError, SUPPORTED_APIS, error_code};

fn response(error: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(
            SUPPORTED_APIS
                .iter()
                .map(|&(key, min, max)| {
                    ApiVersion::default()
                        .with_api_key(key as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
}

pub fn handle(mut request: Request) -> Result<Option<Vec<Piece>>, DecodeError> {
    // The body carries only the client's name and version (v3); nothing to act on, but a
    // body that does not decode is still refused.
    let _: kafka_protocol::messages::ApiVersionsRequest = request.decode("ApiVersions request")?;
    request.respond(&response(error_code::NONE))
}

/// The v0 answer to an ApiVersions request of a version we do not speak.
pub fn unsupported(correlation_id: i32) -> Result<Vec<u8>, DecodeError> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    buf.put_i32(correlation_id);
    response(error_code::UNSUPPORTED_VERSION)
        .encode(&mut buf, 0)
        .map_err(|e| DecodeError::Malformed {
            what: "ApiVersions response",
            reason: e.to_string(),
        })?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    let _ = ApiKey::ApiVersions;
    Ok(buf.to_vec())
}
