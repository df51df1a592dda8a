//! Answers leaving the server: their properties, the Maximum Packet Size
//! check, and the hand-over to the answer backlog (`server/backlog.rs`).

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use tracing::{debug, warn};

use super::Request;
use crate::connection::{AckToken, Connection};
use crate::protocol::topic;
use crate::protocol::{
    Status, INSTANCE_PROPERTY, POSTCARD_CONTENT_TYPE, SEQ_PROPERTY, STATUS_PROPERTY,
    TEXT_CONTENT_TYPE,
};
use crate::server::backlog::Answer;
use crate::server::limits::Held;

/// A request's acknowledgement, held until its answer is queued; shared by
/// the calls of a batch (acked when the last one is answered).
pub(super) type HeldAck = Option<Arc<AckToken>>;

/// The properties of an answer. Defaults are left out (absent status =
/// `ok`, absent Content Type = postcard): each property costs allocations
/// on both sides.
pub(super) fn reply_properties(
    request: &Request,
    status: Status,
    content_type: &str,
) -> PublishProperties {
    let mut user = Vec::new();
    if status != Status::Ok {
        user.push((STATUS_PROPERTY.to_string(), status.as_str().to_string()));
    }
    if let Some(instance) = &request.instance {
        user.push((INSTANCE_PROPERTY.to_string(), instance.to_string()));
    }
    if let Some(seq) = request.seq {
        user.push((SEQ_PROPERTY.to_string(), seq.to_string()));
    }
    request.reply_metadata.write_to(&mut user);
    PublishProperties {
        correlation_data: request.correlation.clone(),
        content_type: (content_type != POSTCARD_CONTENT_TYPE).then(|| content_type.to_string()),
        user_properties: user,
        ..PublishProperties::default()
    }
}

/// Publishes the answer to `request`, if it asked for one, once the
/// server's answer backlog has room for it (`server/backlog.rs`).
pub(super) async fn send_reply(
    conn: Connection,
    held: &Held,
    request: Request,
    status: Status,
    content_type: &'static str,
    payload: Bytes,
) {
    if let Some(answer) = answer_to(&conn, request, status, content_type, payload) {
        answer.send(&conn, &held.backlog).await;
    }
}

/// Publishes a refusal (or any answer decided on the connection's task)
/// if there is room for it, else drops or delays it by the backlog's
/// policy (`server/backlog.rs`); `ack` is released once it is queued.
pub(super) fn send_refusal(
    conn: &Connection,
    held: &Held,
    request: Request,
    status: Status,
    content_type: &'static str,
    payload: Bytes,
    ack: HeldAck,
) {
    if let Some(answer) = answer_to(conn, request, status, content_type, payload) {
        answer.refuse(conn, &held.backlog, ack);
    }
}

/// The answer to `request`, if it asked for one and one can be sent.
fn answer_to(
    conn: &Connection,
    mut request: Request,
    status: Status,
    content_type: &'static str,
    payload: Bytes,
) -> Option<Answer> {
    let method = &request.method;
    let Some(response_topic) = request.response_topic.take() else {
        debug!(%method, "request without Response Topic: not answered");
        return None;
    };
    if !topic::is_publishable(&response_topic) {
        warn!(%method, %response_topic, "invalid Response Topic: not answered");
        return None;
    }
    if request.correlation.is_none() {
        debug!(%method, "request without Correlation Data: answering without it");
    }
    let mut properties = reply_properties(&request, status, content_type);
    let mut payload = payload;
    // An answer over the broker's Maximum Packet Size cannot be sent (the
    // broker would drop the connection for it): answer `too-large` instead.
    if let Some(limit) = conn.broker_max_packet_size() {
        let fits = |properties: &PublishProperties, payload: &Bytes| {
            crate::connection::publish_size(&response_topic, payload.len(), properties)
                <= limit as usize
        };
        if !fits(&properties, &payload) {
            warn!(%method, size = payload.len(), limit, "answer over the broker's Maximum Packet Size");
            let message = format!(
                "the answer to `{method}` has {} bytes, over the broker's Maximum Packet Size of {limit}",
                payload.len()
            );
            payload = Bytes::from(message);
            properties = reply_properties(&request, Status::TooLarge, TEXT_CONTENT_TYPE);
            if !fits(&properties, &payload) {
                warn!(%method, "not even the error fits the broker's packet size: not answered");
                return None;
            }
        }
    }
    // The broker's PUBACK concerns the answer's delivery, which no one
    // here can act on; the backlog counts the answer until then.
    Some(Answer {
        topic: response_topic,
        qos: request.qos,
        payload,
        properties,
        batched: request.batched,
    })
}
