//! Answers sent in chunks, each within the caller's latest grant
//! (PROTOCOL.md, "Chunked transfer").

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::debug;

use super::super::answer::{reply_properties, send_reply};
use super::super::dispatch::Dispatcher;
use super::super::duplicates::call_key;
use super::super::{Request, Service};
use crate::connection::Connection;
use crate::protocol::chunk::{cut, ChunkHeader, CHUNK_PROPERTY};
use crate::protocol::{topic, Status};

/// The grants of one chunked answer: how far the caller lets it go, and
/// whether it was cancelled.
#[derive(Debug)]
pub(crate) struct Grants {
    granted: AtomicU32,
    stopped: AtomicBool,
    more: Notify,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            granted: AtomicU32::new(1),
            stopped: AtomicBool::new(false),
            more: Notify::new(),
        }
    }
}

impl Grants {
    /// The caller takes the chunks below `n` (grants only grow).
    pub fn grant(&self, n: u32) {
        self.granted.fetch_max(n, Ordering::AcqRel);
        self.more.notify_one();
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.more.notify_one();
    }

    /// Waits until chunk `index` may go; false if the answer was cancelled.
    async fn wait_for(&self, index: u32) -> bool {
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return false;
            }
            if self.granted.load(Ordering::Acquire) > index {
                return true;
            }
            self.more.notified().await;
        }
    }
}

/// The longest `mqrpc-chunk` value, for the size of a chunk's packet.
const LONGEST_HEADER: &str = "4294967295/4294967295/18446744073709551615";

impl<S: Service> Dispatcher<S> {
    /// Sends the answer to `request`: as one message, or in chunks when it
    /// is over the chunk size or the broker's Maximum Packet Size (answers
    /// of unary calls only; others get `too-large` from [`send_reply`]).
    pub(in crate::server) async fn answer(
        &self,
        conn: Connection,
        request: Request,
        status: Status,
        content_type: &'static str,
        payload: Bytes,
    ) {
        if !self.answer_in_chunks(&conn, &request, status, content_type, &payload) {
            return send_reply(conn, &self.held, request, status, content_type, payload).await;
        }
        self.send_chunks(conn, request, status, content_type, payload)
            .await
    }

    /// Whether the answer to `request` goes in chunks: an answer to a
    /// unary call over the chunk size or the broker's Maximum Packet Size.
    pub(in crate::server) fn answer_in_chunks(
        &self,
        conn: &Connection,
        request: &Request,
        status: Status,
        content_type: &'static str,
        payload: &Bytes,
    ) -> bool {
        let unary = request.seq.is_none() && !request.broadcast && request.correlation.is_some();
        if !unary {
            return false;
        }
        if payload.len() > self.held.transfers.chunking().get_size() {
            return true;
        }
        let (Some(limit), Some(topic)) = (conn.broker_max_packet_size(), &request.response_topic)
        else {
            return false;
        };
        let properties = reply_properties(request, status, content_type);
        crate::connection::publish_size(topic, payload.len(), &properties) > limit as usize
    }

    async fn send_chunks(
        &self,
        conn: Connection,
        mut request: Request,
        status: Status,
        content_type: &'static str,
        payload: Bytes,
    ) {
        let (Some(response_topic), Some(correlation)) =
            (request.response_topic.clone(), request.correlation.clone())
        else {
            return;
        };
        if !topic::is_publishable(&response_topic) {
            return send_reply(conn, &self.held, request, status, content_type, payload).await;
        }
        request.instance = Some(self.instance.clone());
        let mut properties = reply_properties(&request, status, content_type);
        properties.response_topic = Some(self.held.transfers.grant_topic.to_string());
        let mut longest = properties.clone();
        longest
            .user_properties
            .push((CHUNK_PROPERTY.to_string(), LONGEST_HEADER.to_string()));
        let overhead = crate::connection::publish_size(&response_topic, 0, &longest);
        let chunking = *self.held.transfers.chunking();
        let size = chunking.slice_size(overhead, conn.broker_max_packet_size());
        if size == 0 {
            return send_reply(conn, &self.held, request, status, content_type, payload).await;
        }
        let count = cut(payload.len(), size);
        let key = call_key(&response_topic, &correlation);
        let grants = Arc::new(Grants::default());
        self.held
            .transfers
            .lock()
            .sending
            .insert(key.clone(), grants.clone());
        let idle = chunking.get_idle();
        let deadline = request.deadline.map(tokio::time::Instant::from_std);
        debug!(service = S::NAME, method = %request.method, bytes = payload.len(), count, "sending a chunked answer");
        for index in 0..count {
            if index > 0 {
                let until = tokio::time::Instant::now() + idle;
                let until = deadline.map_or(until, |d| d.min(until));
                match tokio::time::timeout_at(until, grants.wait_for(index)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        debug!(service = S::NAME, index, "chunked answer cancelled");
                        break;
                    }
                    Err(_) => {
                        debug!(
                            service = S::NAME,
                            index, "chunked answer: no grant in time, stopped"
                        );
                        break;
                    }
                }
            }
            let start = index as usize * size;
            let end = (start + size).min(payload.len());
            let header = ChunkHeader {
                index,
                count,
                total: payload.len() as u64,
            };
            let mut chunk = properties.clone();
            chunk
                .user_properties
                .push((CHUNK_PROPERTY.to_string(), header.value()));
            let slice = payload.slice(start.min(end)..end);
            drop(conn.publish(response_topic.clone(), request.qos, slice, chunk, false));
        }
        let mut transfers = self.held.transfers.lock();
        if transfers
            .sending
            .get(&key)
            .is_some_and(|g| Arc::ptr_eq(g, &grants))
        {
            transfers.sending.remove(&key);
        }
    }

    /// A grant for a chunked answer (a credit message with
    /// `mqrpc-chunk-grant`).
    pub(in crate::server) fn chunk_grant(&self, request: &Request) {
        let (Some(topic), Some(correlation), Some(n)) = (
            &request.cancel_of,
            &request.correlation,
            request.chunk_grant,
        ) else {
            return;
        };
        let key = call_key(topic, correlation);
        match self.held.transfers.lock().sending.get(&key) {
            Some(grants) => grants.grant(n),
            None => debug!(service = S::NAME, "grant for no chunked answer: ignored"),
        }
    }
}
