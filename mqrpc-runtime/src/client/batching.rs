//! Whether a call may travel in a batch request (PROTOCOL.md, "Batches").
//! Only to a target where a server answered a batch probe: a server that
//! does not know batches never gets one (it does not even subscribe to the
//! batch topic), and a call is never held back for company, since the
//! transport merges only what is already queued. The probe is sent only
//! once calls overlap: a client with one call at a time never sends one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::debug;

use super::{request_properties, Client, Waiter};
use crate::connection::AckTo;
use crate::error::Failure;
use crate::protocol::{Status, BATCH_CONTENT_TYPE};

const UNKNOWN: u8 = 0;
const PROBING: u8 = 1;
const YES: u8 = 2;
const NO: u8 = 3;

/// After a failed probe, the next one waits this long (servers may be
/// upgraded or started meanwhile).
const PROBE_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// What a connection knows of one request target (`<prefix>/<service>/` or
/// `.../_to/<instance>/`).
#[derive(Debug, Default)]
pub(crate) struct BatchTarget {
    state: AtomicU8,
    failed_at: Mutex<Option<Instant>>,
}

/// The targets of one connection's clients.
#[derive(Debug, Default)]
pub(crate) struct BatchTargets(Mutex<HashMap<Arc<str>, Arc<BatchTarget>>>);

impl BatchTargets {
    pub(crate) fn get(&self, topic_base: &Arc<str>) -> Arc<BatchTarget> {
        let mut targets = self.0.lock().unwrap_or_else(|e| e.into_inner());
        targets.entry(topic_base.clone()).or_default().clone()
    }
}

impl Client {
    /// True when this call may be merged with others to its target; starts
    /// the target's probe when it is due and calls overlap.
    pub(super) fn batchable(&self) -> bool {
        if !self.options.batches {
            return false;
        }
        let target = &self.batch;
        let state = target.state.load(Ordering::Acquire);
        match state {
            YES => return true,
            PROBING => return false,
            NO => {
                let failed_at = *target.failed_at.lock().unwrap_or_else(|e| e.into_inner());
                if failed_at.is_some_and(|at| at.elapsed() < PROBE_AGAIN_AFTER) {
                    return false;
                }
            }
            UNKNOWN => {}
            _ => return false,
        }
        // One call at a time gains nothing from batches.
        if self.caller.lock().len() < 2 {
            return false;
        }
        if target
            .state
            .compare_exchange(state, PROBING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tokio::spawn(self.clone().probe());
        }
        false
    }

    /// A call of a batching target timed out: the servers that took batches
    /// may be gone (a broker that does not report "no matching subscribers"
    /// drops batches silently), so calls go alone until a probe answers
    /// again.
    pub(super) fn batch_timed_out(&self) {
        let _ =
            self.batch
                .state
                .compare_exchange(YES, UNKNOWN, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// An empty batch, outside the pending-call limit: a server that takes
    /// batches answers it `ok`.
    async fn probe(self) {
        let (tx, rx) = oneshot::channel();
        let id = self.caller.register_unbounded(Waiter::Once(tx));
        let properties = request_properties(
            &self.caller.reply_topic,
            id,
            self.options.codec,
            None,
            self.options.timeout,
        );
        let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
            content_type: Some(BATCH_CONTENT_TYPE.to_string()),
            ..properties
        };
        let topic = crate::protocol::topic::batch_topic(&self.topic_base);
        self.conn.publish_to(
            topic,
            self.options.qos,
            Bytes::from_static(&[0x00]),
            properties,
            false,
            AckTo::Listener(self.caller.clone(), id),
        );
        let answer = tokio::time::timeout(self.options.timeout, super::answer(rx)).await;
        self.caller.lock().remove(&id);
        match answer {
            Ok(Ok(response)) if response.status == Status::Ok => {
                debug!(service = %self.service, target = %self.topic_base, "batches on");
                self.batch.state.store(YES, Ordering::Release);
            }
            other => {
                let outcome = match other {
                    Ok(Ok(response)) => format!("{:?}", response.status),
                    Ok(Err(Failure::Refused(refusal))) => format!("{refusal:?}"),
                    Ok(Err(Failure::Error(e))) => e.to_string(),
                    Ok(Err(Failure::Gone(instance))) => format!("{instance} gone"),
                    Ok(Err(Failure::Chunked(_))) => "a chunked answer".into(),
                    Err(_) => "no answer".into(),
                };
                debug!(service = %self.service, target = %self.topic_base, %outcome, "no batches");
                *self
                    .batch
                    .failed_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                self.batch.state.store(NO, Ordering::Release);
            }
        }
    }
}
