//! Acknowledgements both ways: the [`AckToken`] of an incoming QoS 1/2
//! publish (acks leave in arrival order), who is told the broker's answer
//! to an outgoing one ([`AckTo`]), and the futures resolving to it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};

#[cfg(doc)]
use crate::Transport;
use crate::{ReasonCode, TransportError};

/// Acknowledges one incoming QoS 1/2 publish.
///
/// Acks leave in the order the publishes arrived (MQTT-4.6.0-2): an ack made
/// early waits until every older publish on the connection is acked.
/// **Dropping a token without calling [`ack`](Self::ack) or
/// [`reject`](Self::reject) acks it with 0x00**, so one forgotten token can
/// never hold back the acks behind it forever.
#[derive(Debug)]
pub struct AckToken {
    acks: std::sync::Arc<AckQueue>,
    seq: u64,
    done: bool,
}

/// Where ended tokens put their acks. A token ended while the loop is
/// handing out publishes (the usual case: nobody took it) goes into
/// `inline`, which the loop takes right after: no wake-up of the loop's own
/// task, which would have it rescheduled and another worker woken up for
/// every QoS 1 publish. Tokens ended later, by other tasks, go through the
/// channel.
#[derive(Debug)]
pub(crate) struct AckQueue {
    /// `(dispatching, acks)`: one lock, so no ack lands after the loop took them.
    inline: std::sync::Mutex<(bool, Vec<(u64, u8)>)>,
    tx: mpsc::UnboundedSender<(u64, u8)>,
}

impl AckQueue {
    pub(crate) fn new(tx: mpsc::UnboundedSender<(u64, u8)>) -> Self {
        AckQueue {
            inline: std::sync::Mutex::new((false, Vec::new())),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, Vec<(u64, u8)>)> {
        self.inline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The loop starts handing out publishes.
    pub(crate) fn dispatching(&self) {
        self.lock().0 = true;
    }

    /// The loop is done handing out: the acks of the tokens ended meanwhile.
    pub(crate) fn dispatched(&self, into: &mut Vec<(u64, u8)>) {
        let mut inline = self.lock();
        inline.0 = false;
        into.append(&mut inline.1);
    }

    fn push(&self, ack: (u64, u8)) {
        let mut inline = self.lock();
        if inline.0 {
            inline.1.push(ack);
        } else {
            drop(inline);
            let _ = self.tx.send(ack);
        }
    }
}

impl AckToken {
    pub(crate) fn new(acks: std::sync::Arc<AckQueue>, seq: u64) -> AckToken {
        AckToken {
            acks,
            seq,
            done: false,
        }
    }

    /// PUBACK / PUBREC with 0x00.
    pub fn ack(mut self) {
        self.send(0x00);
    }

    /// PUBACK / PUBREC with this code (0x80 and up refuse the publish; codes
    /// the codec cannot carry become 0x80).
    pub fn reject(mut self, code: u8) {
        self.send(code);
    }

    fn send(&mut self, code: u8) {
        self.done = true;
        self.acks.push((self.seq, code));
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if !self.done {
            self.send(0x00);
        }
    }
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, TransportError>>;

/// Who is told the broker's answer to one publish (see
/// [`Transport::publish_to`]).
pub enum AckTo {
    /// A [`PublishAck`] future.
    Future(Reply<ReasonCode>),
    /// A listener, called on the loop's task with the publish's id: no task
    /// to wake when only a refusal matters (a call's answer, which comes
    /// later, wakes its task anyway).
    Listener(std::sync::Arc<dyn AckListener>, u64),
}

impl AckTo {
    /// An ack to await: the [`PublishAck`] it resolves.
    pub fn future() -> (AckTo, PublishAck) {
        let (tx, rx) = oneshot::channel();
        (AckTo::Future(tx), PublishAck(Answer(rx)))
    }

    pub(crate) fn send(self, answer: Result<ReasonCode, TransportError>) {
        match self {
            AckTo::Future(reply) => drop(reply.send(answer)),
            AckTo::Listener(listener, id) => listener.acked(id, answer),
        }
    }
}

/// Told the broker's answer to publishes queued with an
/// [`AckTo::Listener`]. Runs on the loop's task: it must not block.
pub trait AckListener: Send + Sync {
    /// The broker's answer to the publish queued with id `id`.
    fn acked(&self, id: u64, answer: Result<ReasonCode, TransportError>);
}

/// The shared body of the ack futures.
#[derive(Debug)]
pub(crate) struct Answer<T>(pub(crate) oneshot::Receiver<Result<T, TransportError>>);

impl<T> Future for Answer<T> {
    type Output = Result<T, TransportError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(TransportError::Closed)))
    }
}

macro_rules! answer_future {
    ($(#[$doc:meta])* $name:ident, $t:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        #[must_use = "the broker's answer is only seen by awaiting it"]
        pub struct $name(pub(crate) Answer<$t>);

        impl Future for $name {
            type Output = Result<$t, TransportError>;
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
                Pin::new(&mut self.0).poll(cx)
            }
        }
    };
}

answer_future!(
    /// Resolves to the reason code of one publish (see [`Transport::publish`]).
    /// Dropping it does not cancel the publish.
    PublishAck,
    ReasonCode
);
answer_future!(
    /// Resolves to the SUBACK's codes, one per filter.
    SubAck,
    Vec<ReasonCode>
);
answer_future!(
    /// Resolves to the UNSUBACK's codes, one per filter.
    UnsubAck,
    Vec<ReasonCode>
);
