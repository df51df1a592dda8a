//! The caller's side of client streaming and bidirectional streaming:
//! methods taking `mqrpc::Stream<T>` (PROTOCOL.md, "Client streaming and
//! bidirectional streaming").
//!
//! The caller passes any `futures::Stream` of items, as with tonic's
//! client streaming (`client.upload(stream).await`): mqrpc pulls the next
//! item only when the server has granted credit for it, so a producer
//! faster than the server is held back at the source (a `ReceiverStream`
//! whose sender then waits on `send`, an iterator that is not advanced)
//! and never more than [`STREAM_WINDOW`](crate::STREAM_WINDOW) items are
//! on the way. A sender half would need a queue of its own, and an
//! error path for items sent after the call ended; a stream has neither.

use std::pin::pin;

use bytes::Bytes;
use futures_util::StreamExt;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde::Serialize;
use tokio::sync::mpsc;

use super::many::Gather;
use super::{topic_base, BroadcastSlot, Client, Control, Items, Response};
use crate::error::Failure;
use crate::protocol::{
    Status, CANCEL_RESPONSE_TOPIC_PROPERTY, INSTANCE_LEVEL, ITEM_METHOD, SEQ_PROPERTY,
    STATUS_PROPERTY,
};
use crate::{Error, QoS, STREAM_WINDOW as WINDOW};

/// The answers of a call with an upstream: grants, then its answer (or,
/// bidirectional, its items).
type Frames = mpsc::Receiver<Result<Response, Failure>>;

/// Room for the server's answers: a window of items, the end marker, and
/// the grants between them.
const CAPACITY: usize = WINDOW as usize * 2 + 4;

/// Sends a cancel for the call when dropped before it ended.
struct CancelOnDrop<'a> {
    client: &'a Client,
    id: u64,
    instance: Option<String>,
    done: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.client
                .send_control(self.id, self.instance.as_deref(), Control::Cancel);
        }
    }
}

/// What the caller has been granted and sent of its items.
struct Pump<I> {
    items: I,
    /// Items the server may still take.
    credit: u64,
    /// The next item's `mqrpc-seq`.
    seq: u64,
    /// The input ended and its end marker went out.
    ended: bool,
    qos: QoS,
    /// `<prefix>/<service>/_to/<instance>/_item`, once a grant named it.
    topic: Option<String>,
    /// The instance that granted it.
    instance: Option<String>,
}

impl<I> Pump<I>
where
    I: futures_util::Stream + Unpin,
    I::Item: Serialize,
{
    fn new(items: I, qos: QoS) -> Pump<I> {
        Pump {
            items,
            credit: 0,
            seq: 0,
            ended: false,
            qos,
            topic: None,
            instance: None,
        }
    }

    /// Takes a grant; the first one names the instance all items go to.
    fn grant(&mut self, client: &Client, response: &Response) {
        if self.topic.is_none() {
            if let Some(instance) = &response.instance {
                self.topic = Some(format!(
                    "{}{INSTANCE_LEVEL}/{instance}/{ITEM_METHOD}",
                    topic_base(&client.options.prefix, &client.service)
                ));
                self.instance = Some(instance.clone());
            }
        }
        self.credit += u64::from(response.credit.unwrap_or(0));
    }

    /// True while an item may go: credit left and an instance to send to.
    fn ready(&self) -> bool {
        !self.ended && self.credit > 0 && self.topic.is_some()
    }

    /// Sends `item` (or, at `None`, the end marker).
    fn send(&mut self, client: &Client, id: u64, item: Option<I::Item>) -> Result<(), Error> {
        let Some(topic) = self.topic.clone() else {
            return Ok(());
        };
        let (payload, end) = match item {
            Some(item) => (client.options.codec.encode(&item)?, false),
            None => (Vec::new(), true),
        };
        let properties = item_properties(client, id, self.seq, end);
        client.check_size(&topic, payload.len(), &properties)?;
        // Not awaited: the credit bounds what is on the way, and a lost
        // connection ends the call through its pending entry.
        drop(
            client
                .conn
                .publish(topic, self.qos, Bytes::from(payload), properties, false),
        );
        if end {
            self.ended = true;
        } else {
            self.seq += 1;
            self.credit -= 1;
        }
        Ok(())
    }
}

/// The properties of an item (`end: false`) or the end marker.
fn item_properties(client: &Client, id: u64, seq: u64, end: bool) -> PublishProperties {
    properties_of_item(
        &client.caller.reply_topic,
        client.options.codec,
        id,
        seq,
        end,
    )
}

/// [`item_properties`] of a call whose answers go to `reply_topic`
/// (PROTOCOL.md, "Client streaming and bidirectional streaming").
fn properties_of_item(
    reply_topic: &str,
    codec: crate::Codec,
    id: u64,
    seq: u64,
    end: bool,
) -> PublishProperties {
    let mut user_properties = vec![
        (
            CANCEL_RESPONSE_TOPIC_PROPERTY.to_string(),
            reply_topic.to_string(),
        ),
        (SEQ_PROPERTY.to_string(), seq.to_string()),
    ];
    if end {
        user_properties.push((
            STATUS_PROPERTY.to_string(),
            Status::End.as_str().to_string(),
        ));
    }
    PublishProperties {
        correlation_data: Some(Bytes::copy_from_slice(&id.to_be_bytes())),
        content_type: (codec != crate::Codec::Postcard).then(|| codec.content_type().to_string()),
        user_properties,
        ..PublishProperties::default()
    }
}

impl Client {
    /// Opens a call with an upstream: the request with the other
    /// arguments, to the service (any member of its share group).
    async fn open_upstream<A: Serialize + ?Sized>(
        &self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
    ) -> Result<(Frames, BroadcastSlot), Error> {
        let topic = [&*self.topic_base, method].concat();
        let payload = self.options.codec.encode(args)?;
        let _ = topic;
        let target = super::request::Target::Method;
        self.send_many(
            target,
            method,
            qos,
            schema,
            payload,
            CAPACITY,
            Gather::Stream,
        )
    }

    /// Calls a method taking `mqrpc::Stream<T>` and answering once
    /// (client streaming): sends `args` (the other arguments), then each
    /// item of `items` within the server's credit, then the end marker,
    /// and returns the answer, decoded by `decode`. The client's timeout
    /// covers the whole call. Dropping the future cancels the call; an
    /// answer that comes before the items ran out (the handler returned
    /// early) ends it, and the rest of `items` is not read.
    ///
    /// Entry point of generated clients; hidden from the docs and not
    /// covered by semver: call the generated client's method.
    #[doc(hidden)]
    pub async fn upstream_qos<A, I, T>(
        &self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
        items: I,
        decode: fn(Response, &str) -> Result<T, Error>,
    ) -> Result<T, Error>
    where
        A: Serialize + ?Sized,
        I: futures_util::Stream + Send,
        I::Item: Serialize + Send,
    {
        let (mut frames, slot) = self.open_upstream(method, qos, schema, args).await?;
        let mut guard = CancelOnDrop {
            client: self,
            id: slot.id,
            instance: None,
            done: false,
        };
        let items = pin!(items);
        let mut pump = Pump::new(items, qos.unwrap_or(self.options.qos));
        let exchange = async {
            loop {
                tokio::select! {
                    biased;
                    frame = frames.recv() => {
                        let response = match frame {
                            Some(Ok(response)) => response,
                            Some(Err(failure)) => {
                                guard.done = true;
                                return Err(failure.into_error(method));
                            }
                            None => {
                                guard.done = true;
                                return Err(Error::Protocol { reason: format!("`{method}`: the call ended without an answer") });
                            }
                        };
                        if response.status == Status::Credit {
                            pump.grant(self, &response);
                            guard.instance.clone_from(&pump.instance);
                            continue;
                        }
                        guard.done = true;
                        if response.status == Status::DeadlineExceeded {
                            return Err(Error::Timeout { method: method.to_string(), timeout: self.options.timeout });
                        }
                        return decode(response, method);
                    }
                    item = pump.items.next(), if pump.ready() => pump.send(self, slot.id, item)?,
                }
            }
        };
        let outcome = tokio::time::timeout(self.options.timeout, exchange).await;
        drop(slot);
        outcome.unwrap_or_else(|_| {
            Err(Error::Timeout {
                method: method.to_string(),
                timeout: self.options.timeout,
            })
        })
    }

    /// Calls a method taking `mqrpc::Stream<T>` and returning
    /// `mqrpc::Stream<U>` (bidirectional streaming): sends `args`, then
    /// the items of `items` within the server's credit, from a task of
    /// its own, while the answer's items come as [`Items`] (with the
    /// caller's credit, idle and total timeouts, as a server stream's).
    /// Dropping the `Items` cancels the call on the server and stops
    /// reading `items`; so does the answer stream's end.
    ///
    /// Entry point of generated clients; hidden from the docs and not
    /// covered by semver: call the generated client's method.
    #[doc(hidden)]
    pub async fn bidi_qos<A, I, T>(
        &self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
        items: I,
        decode: fn(Response, &str) -> Result<T, Error>,
    ) -> Result<Items<T>, Error>
    where
        A: Serialize + ?Sized,
        I: futures_util::Stream + Send + 'static,
        I::Item: Serialize + Send,
    {
        let (frames, slot) = self.open_upstream(method, qos, schema, args).await?;
        let id = slot.id;
        let (answers_tx, answers) = mpsc::channel(WINDOW as usize + 2);
        let pump = Pump::new(Box::pin(items), qos.unwrap_or(self.options.qos));
        tokio::spawn(route(self.clone(), id, frames, answers_tx, pump));
        let sequence = super::sequence::Sequence::start(self, method, answers, slot);
        Ok(Items::of_sequence(sequence, decode))
    }
}

/// The task of a bidirectional call: takes the grants, sends the items,
/// and hands every other answer to the caller's [`Items`]. Ends at the
/// last answer, or when the `Items` is dropped (its pending entry then
/// goes, and with it `frames`).
async fn route<I>(
    client: Client,
    id: u64,
    mut frames: Frames,
    answers: mpsc::Sender<Result<Response, Failure>>,
    mut pump: Pump<I>,
) where
    I: futures_util::Stream + Unpin,
    I::Item: Serialize,
{
    loop {
        tokio::select! {
            biased;
            frame = frames.recv() => {
                let Some(frame) = frame else { return };
                let last = match &frame {
                    Ok(response) if response.status == Status::Credit => {
                        pump.grant(&client, response);
                        continue;
                    }
                    Ok(response) => !(response.status == Status::Ok && response.seq.is_some()),
                    Err(_) => true,
                };
                if answers.send(frame).await.is_err() || last {
                    return;
                }
            }
            item = pump.items.next(), if pump.ready() => {
                if let Err(error) = pump.send(&client, id, item) {
                    // E.g. an item over the broker's packet size: the
                    // call ends with it, and the server is told.
                    client.send_control(id, pump.instance.as_deref(), Control::Cancel);
                    let _ = answers.send(Err(Failure::Error(error))).await;
                    return;
                }
            }
            () = answers.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::Publish;
    use rumqttc::v5::mqttbytes::QoS as WireQoS;

    /// The bytes of `publish`, as they go to the broker.
    fn wire(topic: &str, payload: Vec<u8>, properties: PublishProperties) -> Vec<u8> {
        let mut publish = Publish::new(topic, WireQoS::AtLeastOnce, payload, Some(properties));
        publish.pkid = 2;
        let mut buffer = bytes::BytesMut::new();
        publish.write(&mut buffer).unwrap();
        buffer.to_vec()
    }

    /// The hex pairs and "quoted" strings of the block after `marker` in
    /// PROTOCOL.md (each line up to its comment).
    fn documented(marker: &str) -> Vec<u8> {
        let document = include_str!("../../../PROTOCOL.md");
        let example = document
            .split(marker)
            .nth(1)
            .unwrap_or_else(|| panic!("PROTOCOL.md marks {marker}"));
        let mut bytes = Vec::new();
        for line in example.lines().skip(1) {
            if line.starts_with("```") {
                if !bytes.is_empty() {
                    break;
                }
                continue;
            }
            for token in line.split_whitespace() {
                if let Some(text) = token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                    bytes.extend_from_slice(text.as_bytes());
                } else if token.len() == 2 && u8::from_str_radix(token, 16).is_ok() {
                    bytes.push(u8::from_str_radix(token, 16).unwrap_or_default());
                } else {
                    break;
                }
            }
        }
        bytes
    }

    /// The item and end marker of PROTOCOL.md's example, byte for byte.
    #[test]
    fn item_bytes_match_the_protocol_document() {
        let topic = "mqrpc/Files/_to/disk-1/_item";
        let payload = crate::Codec::Postcard.encode(&vec![1u8, 2, 3]).unwrap();
        let item = properties_of_item("mqrpc/_reply/c1", crate::Codec::Postcard, 7, 0, false);
        assert_eq!(
            wire(topic, payload, item),
            documented("<!-- item bytes -->")
        );
        let end = properties_of_item("mqrpc/_reply/c1", crate::Codec::Postcard, 7, 1, true);
        assert_eq!(
            wire(topic, Vec::new(), end),
            documented("<!-- end bytes -->")
        );
    }
}
