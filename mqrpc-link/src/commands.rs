//! What a [`Transport`](crate::Transport) handle hands its loop: the
//! commands, and the counts of what was sent.

use tokio::sync::oneshot;

use crate::acks::Reply;
use crate::{AckTo, Filter, OutgoingPublish, ReasonCode, SubscribeProperties};

/// A request from a handle to the loop.
pub(crate) enum Command {
    Publish(OutgoingPublish, AckTo),
    Subscribe(
        Vec<Filter>,
        Option<SubscribeProperties>,
        Reply<Vec<ReasonCode>>,
    ),
    Unsubscribe(Vec<String>, Reply<Vec<ReasonCode>>),
    Disconnect(oneshot::Sender<()>),
}

/// What the transport has sent, counted as it goes.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) publishes: std::sync::atomic::AtomicU64,
    pub(crate) merged: std::sync::atomic::AtomicU64,
    pub(crate) merged_parts: std::sync::atomic::AtomicU64,
}
