//! InitProducerId (0-1): producer ids for idempotent producers.

use std::rc::Rc;

use super::Request;
use crate::kafka::fetch_response::Piece;
use crate::kafka::protocol::{DecodeError, error_code};
use crate::runtime::shard::Shard;

/// InitProducerId (0-1): a fresh producer id, epoch 0, for idempotent producers.
/// Transactions are not supported: a transactional id is refused.
pub fn init_producer_id(
    shard: &Rc<Shard>,
    mut request: Request,
) -> Result<Option<Vec<Piece>>, DecodeError> {
    use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
    let req: InitProducerIdRequest = request.decode("InitProducerId request")?;
    let response = if req.transactional_id.is_some() {
        InitProducerIdResponse::default()
            .with_error_code(error_code::INVALID_REQUEST)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    } else {
        match shard.shared.producer_ids().allocate() {
            Ok(id) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
            Err(e) => {
                tracing::error!(error = %e, "cannot allocate a producer id");
                InitProducerIdResponse::default()
                    .with_error_code(error_code::COORDINATOR_NOT_AVAILABLE)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1)
            }
        }
    };
    request.respond(&response)
}
