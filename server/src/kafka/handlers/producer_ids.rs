//! InitProducerId (0-1): producer ids for idempotent producers.

use std::rc::Rc;

use super::Request;
use crate::kafka::fetch_response::Piece;
use crate::kafka::protocol::{DecodeError, error_code};
use crate::runtime::shard::Shard;

/// InitProducerId (0-1): a fresh producer id, epoch 0, for idempotent producers.
/// Transactions are not supported: a transactional id is refused.
pub async fn init_producer_id(
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
        match allocate(shard).await {
            Ok(id) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
            Err(e) => {
                tracing::warn!(error = %e, "cannot allocate a producer id");
                InitProducerIdResponse::default()
                    .with_error_code(error_code::COORDINATOR_NOT_AVAILABLE)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1)
            }
        }
    };
    request.respond(&response)
}

/// An id from this broker's block, taking a new block from the controller when it is
/// used up (concurrent requests may each take one; ids are plentiful).
async fn allocate(shard: &Shard) -> Result<i64, String> {
    if let Some(id) = shard.shared.producer_ids().take() {
        return Ok(id);
    }
    let floor = shard.shared.producer_ids().floor();
    let command = cluster::Command::AllocateProducerIds {
        broker: shard.shared.node_id(),
        at_least: floor,
    };
    match shard.shared.controller.propose(command).await {
        Ok(cluster::Applied::ProducerIds { start, end }) => {
            let mut ids = shard.shared.producer_ids();
            ids.add_block(start, end).map_err(|e| e.to_string())?;
            ids.take()
                .ok_or_else(|| "an empty producer id block".to_owned())
        }
        Ok(other) => Err(format!("the controller answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}
