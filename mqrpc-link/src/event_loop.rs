//! The task that owns the stream: CONNECT/CONNACK, one write per batch of
//! queued packets, reading, keep-alive, and reconnecting with backoff.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    Login, Packet, PingReq,
};
use rumqttc::v5::mqttbytes::Error as CodecError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};

use crate::coalesce::{self, Replies};
use crate::commands::{Command, Counts};
use crate::events::EventSink;
use crate::session::Session;
use crate::{AckTo, ConnectionState, Connector, Event, OutgoingPublish, TransportConfig};

/// How a connection ended without an I/O error.
enum Stop {
    /// `disconnect()` was called (the sender is told once DISCONNECT is out).
    Disconnect(Option<oneshot::Sender<()>>),
}

struct Loop {
    config: TransportConfig,
    session: Session,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    ack_rx: mpsc::UnboundedReceiver<(u64, u8)>,
    events: EventSink,
    state: watch::Sender<ConnectionState>,
    /// Clean Start is asked for on the first CONNECT only.
    connected_once: bool,
    /// The current attempt got a CONNACK (resets the backoff).
    connacked: bool,
    /// Every `Transport` handle is gone: stop once nothing is in flight.
    closing: bool,
    /// The reason code of a refused CONNACK on the current attempt.
    refused: Option<u8>,
    /// A command taken by the select, handled with the next drain so that
    /// it can be merged with what queued behind it.
    taken: Option<Command>,
    /// The last read brought more than one publish.
    several_woken: bool,
    counts: Arc<Counts>,
}

pub(crate) async fn run<C: Connector>(
    config: TransportConfig,
    mut connector: C,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    events: EventSink,
    state: watch::Sender<ConnectionState>,
    counts: Arc<Counts>,
) {
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let session = Session::new(ack_tx, events.clone());
    let mut l = Loop {
        config,
        session,
        cmd_rx,
        ack_rx,
        events,
        state,
        connected_once: false,
        connacked: false,
        closing: false,
        refused: None,
        taken: None,
        several_woken: false,
        counts,
    };
    let mut delay = l.config.reconnect.map(|b| b.min);
    loop {
        l.set_state(ConnectionState::Connecting);
        l.connacked = false;
        l.refused = None;
        let error = match l.connection(&mut connector).await {
            Ok(Stop::Disconnect(done)) => {
                l.finish("disconnected".into());
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            Err(e) => e,
        };
        l.session.on_link_lost();
        if l.connacked {
            delay = l.config.reconnect.map(|b| b.min);
        }
        let Some(retry_in) = delay.filter(|_| !l.closing) else {
            l.finish(error.to_string());
            return;
        };
        l.set_state(ConnectionState::Disconnected {
            error: error.to_string(),
            retry_in: Some(retry_in),
            refused: l.refused,
        });
        // While waiting, a disconnect (or every handle gone) stops the
        // loop; publishes and subscriptions queue for the next link.
        let wake = Instant::now() + retry_in;
        loop {
            tokio::select! {
                _ = sleep_until(wake) => break,
                c = l.cmd_rx.recv() => match c {
                    Some(c) => {
                        if let Some(Stop::Disconnect(done)) = l.command(c) {
                            l.finish("disconnected".into());
                            if let Some(done) = done {
                                let _ = done.send(());
                            }
                            return;
                        }
                    }
                    None => {
                        l.finish("every handle dropped".into());
                        return;
                    }
                },
            }
        }
        if let Some(b) = l.config.reconnect {
            delay = Some((retry_in * 2).min(b.max));
        }
    }
}

impl Loop {
    fn set_state(&mut self, s: ConnectionState) {
        self.events.send(Event::State(s.clone()));
        self.state.send_replace(s);
    }

    fn finish(&mut self, error: String) {
        self.session.close();
        self.set_state(ConnectionState::Disconnected {
            error,
            retry_in: None,
            refused: self.refused,
        });
    }

    fn connect_packet(&self) -> Packet {
        let c = &self.config;
        let properties = ConnectProperties {
            session_expiry_interval: Some(c.session_expiry).filter(|e| *e > 0),
            receive_maximum: Some(c.receive_maximum),
            max_packet_size: Some(c.max_packet_size),
            request_response_info: c.request_response_information.then_some(1),
            ..ConnectProperties::new()
        };
        let connect = Connect {
            keep_alive: c.keep_alive.as_secs().min(u16::MAX as u64) as u16,
            client_id: c.client_id.clone(),
            clean_start: c.clean_start && !self.connected_once,
            properties: Some(properties),
        };
        let login = c.credentials.as_ref().map(|(u, p)| Login {
            username: u.clone(),
            password: p.clone(),
        });
        Packet::Connect(connect, c.last_will.clone(), login)
    }

    async fn read_connack<S: AsyncRead + Unpin>(
        &self,
        io: &mut S,
        rbuf: &mut BytesMut,
    ) -> io::Result<ConnAck> {
        loop {
            // What came back, before the codec consumes it.
            let head: Vec<u8> = rbuf.iter().take(16).copied().collect();
            let what = match Packet::read(rbuf, Some(self.config.max_packet_size)) {
                Ok(Packet::ConnAck(c)) => return Ok(c),
                Ok(p) => format!("a {} packet instead of CONNACK", packet_name(&p)),
                Err(CodecError::InsufficientBytes(_)) => {
                    if io.read_buf(rbuf).await? != 0 {
                        continue;
                    }
                    if head.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the peer closed the connection without a CONNACK \
                             (is it an MQTT v5 broker port?)",
                        ));
                    }
                    "a part of a packet, then closed the connection".to_string()
                }
                Err(e) => e.to_string(),
            };
            return Err(not_mqtt(&head, &what));
        }
    }

    /// Takes every queued command; publishes go to the session after the
    /// coalescer (if any) merged what it can.
    fn drain_commands(&mut self) -> Option<Stop> {
        let coalescer = self.config.coalescer.clone();
        // Usually one publish is queued: it goes on without a Vec.
        let mut first: Option<(OutgoingPublish, AckTo)> = None;
        let mut more: Vec<(OutgoingPublish, AckTo)> = Vec::new();
        let mut stop = None;
        while let Some(c) = self.taken.take().or_else(|| self.cmd_rx.try_recv().ok()) {
            match c {
                Command::Publish(p, reply) if coalescer.is_some() => match first {
                    None => first = Some((p, reply)),
                    Some(_) => more.push((p, reply)),
                },
                other => {
                    stop = self.command(other);
                    if stop.is_some() {
                        break;
                    }
                }
            }
        }
        match (coalescer, first) {
            (Some(coalescer), Some(first)) if !more.is_empty() => {
                more.insert(0, first);
                let limits = self.config.coalesce_limits;
                for (p, replies) in coalesce::coalesce(&*coalescer, limits, more) {
                    if let Replies::Merged(parts) = &replies {
                        self.counts.merged.fetch_add(1, Relaxed);
                        self.counts
                            .merged_parts
                            .fetch_add(parts.len() as u64, Relaxed);
                    }
                    self.counts.publishes.fetch_add(1, Relaxed);
                    self.session.publish(p, replies);
                }
            }
            (_, Some((p, reply))) => {
                self.counts.publishes.fetch_add(1, Relaxed);
                self.session.publish(p, Replies::One(reply));
            }
            (_, None) => {}
        }
        stop
    }

    fn command(&mut self, c: Command) -> Option<Stop> {
        match c {
            Command::Publish(p, reply) => {
                self.counts.publishes.fetch_add(1, Relaxed);
                self.session.publish(p, Replies::One(reply))
            }
            Command::Subscribe(f, props, reply) => self.session.subscribe(f, props, reply),
            Command::Unsubscribe(f, reply) => self.session.unsubscribe(f, reply),
            Command::Disconnect(done) => return Some(Stop::Disconnect(Some(done))),
        }
        None
    }

    /// One connection, from CONNECT until it fails or the transport stops.
    async fn connection<C: Connector>(&mut self, connector: &mut C) -> io::Result<Stop> {
        // One deadline for the whole handshake, CONNACK included: a peer
        // that accepts TCP but never answers must not hold the attempt.
        let timeout = self.config.connect_timeout;
        let deadline = Instant::now() + timeout;
        let mut io = tokio::time::timeout_at(deadline, connector.connect())
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                )
            })??;
        let mut rbuf = BytesMut::with_capacity(16 * 1024);
        let handshake = async {
            let mut wbuf = BytesMut::new();
            let _ = self.connect_packet().write(&mut wbuf, None);
            io.write_all(&wbuf).await?;
            io.flush().await?;
            self.read_connack(&mut io, &mut rbuf).await
        };
        let connack = tokio::time::timeout_at(deadline, handshake)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no CONNACK within {timeout:?}: the peer accepted the connection but \
                         did not answer as an MQTT v5 broker; is it an MQTT v5 broker port?"
                    ),
                )
            })??;
        if connack.code != ConnectReturnCode::Success {
            self.refused = Some(crate::codes::connack(&connack.code));
            return Err(io::Error::other(format!(
                "CONNACK refused: {:?}",
                connack.code
            )));
        }
        self.session
            .on_connack(&connack, self.config.resend_after_session_loss);
        self.connected_once = true;
        self.connacked = true;
        self.set_state(ConnectionState::Connected {
            session_present: connack.session_present,
            server: self.session.limits.clone(),
        });
        let keep_alive = connack
            .properties
            .as_ref()
            .and_then(|p| p.server_keep_alive)
            .map(|s| Duration::from_secs(s.into()))
            .unwrap_or(self.config.keep_alive);
        self.run_connected(io, rbuf, keep_alive).await
    }

    async fn run_connected<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: S,
        mut rbuf: BytesMut,
        keep_alive: Duration,
    ) -> io::Result<Stop> {
        // One task reads and writes; split works for any stream (TLS,
        // WebSocket adapters) and its lock is never contended here.
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut last_write = Instant::now();
        let mut ping_outstanding = false;
        // Written bytes a TLS or WebSocket stream may still hold back (a TCP
        // flush is ready at once).
        let mut unflushed = false;
        let ping = sleep_until(last_write + keep_alive);
        tokio::pin!(ping);
        let max_in = Some(self.config.max_packet_size);
        loop {
            // Everything queued goes into the one buffer before the socket is touched.
            if let Some(stop) = self.drain_commands() {
                return self.stop(&mut rd, &mut wr, stop).await;
            }
            while let Ok((seq, code)) = self.ack_rx.try_recv() {
                self.session.app_ack(seq, code);
            }
            if self.closing && self.session.is_idle() && self.session.wbuf.is_empty() {
                return self.stop(&mut rd, &mut wr, Stop::Disconnect(None)).await;
            }
            let s = &mut self.session;
            tokio::select! {
                biased;
                n = rd.read_buf(&mut rbuf) => {
                    if n? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let mut publishes = 0;
                    loop {
                        // The codec refuses a DISCONNECT without reason code (0x00).
                        if rbuf.starts_with(&[0xE0, 0x00]) {
                            return Err(io::Error::other("server sent DISCONNECT (0x00)"));
                        }
                        match Packet::read(&mut rbuf, max_in) {
                            Ok(Packet::PingResp(_)) => ping_outstanding = false,
                            Ok(p) => {
                                if let Packet::Publish(p) = &p {
                                    let merged = self.config.coalescer.as_ref().is_some_and(|c| c.carries_several(p));
                                    publishes += if merged { 2 } else { 1 };
                                }
                                s.incoming(p)?
                            }
                            Err(CodecError::InsufficientBytes(_)) => {
                                // Several publishes in one read (or a merged
                                // one) woke several tasks: what they send may
                                // travel together.
                                self.several_woken = publishes > 1;
                                break;
                            }
                            Err(e) => return Err(io::Error::other(e.to_string())),
                        }
                    }
                }
                // One write for everything queued; a partial write continues
                // next turn. Once all is written, one flush.
                n = write_or_flush(&mut wr, &s.wbuf), if !s.wbuf.is_empty() || unflushed => {
                    let n = n?;
                    if s.wbuf.is_empty() {
                        unflushed = false;
                        continue;
                    }
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    s.wbuf.advance(n);
                    last_write = Instant::now();
                    if s.wbuf.is_empty() {
                        s.written();
                        unflushed = true;
                    }
                }
                c = self.cmd_rx.recv(), if s.wbuf.is_empty() && !self.closing => match c {
                    Some(c) => {
                        self.taken = Some(c);
                        if self.config.coalescer.is_some()
                            && (self.several_woken || s.has_unacked())
                        {
                            // Calls overlap: tasks woken together (by the
                            // publishes of one read) queue their publishes
                            // before this one goes out, so they can travel
                            // together. Not a timer: only what is ready to
                            // run runs first. One call at a time skips it.
                            tokio::task::yield_now().await;
                        }
                    }
                    None => self.closing = true,
                },
                Some((seq, code)) = self.ack_rx.recv(), if s.wbuf.is_empty() => {
                    s.app_ack(seq, code);
                }
                _ = &mut ping, if !keep_alive.is_zero() => {
                    if ping_outstanding {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "no PINGRESP"));
                    }
                    let due = last_write + keep_alive;
                    if Instant::now() < due {
                        // Re-armed lazily: no timer work per packet.
                        ping.as_mut().reset(due);
                        continue;
                    }
                    let _ = Packet::PingReq(PingReq).write(&mut s.wbuf, None);
                    ping_outstanding = true;
                    ping.as_mut().reset(Instant::now() + keep_alive);
                }
            }
        }
    }

    /// Writes what is queued and a DISCONNECT, then closes the stream
    /// (shutting down flushes it).
    /// Then waits (briefly) for the server to close its side: once it has,
    /// it has taken the DISCONNECT, and no longer routes messages (a shared
    /// subscription's next request) to this client.
    async fn stop<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        stop: Stop,
    ) -> io::Result<Stop> {
        let _ = Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
            .write(&mut self.session.wbuf, None);
        let _ = wr.write_all(&self.session.wbuf).await;
        self.session.wbuf.clear();
        self.session.written();
        let _ = wr.shutdown().await;
        let closed = async {
            let mut sink = [0u8; 512];
            while let Ok(1..) = rd.read(&mut sink).await {}
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), closed).await;
        Ok(stop)
    }
}

/// Writes `buf`, or flushes when it is empty (then yields 0).
async fn write_or_flush<W: AsyncWrite + Unpin>(wr: &mut W, buf: &[u8]) -> io::Result<usize> {
    if buf.is_empty() {
        wr.flush().await.map(|()| 0)
    } else {
        wr.write(buf).await
    }
}

/// The error of a peer that answered CONNECT with something other than an
/// MQTT v5 CONNACK: what it looks like and what to check.
fn not_mqtt(head: &[u8], what: &str) -> io::Error {
    let seen = if head.starts_with(b"HTTP/") {
        "it answered in HTTP (a web server, or a WebSocket endpoint: write ws://host:port/path)"
            .to_string()
    } else if head.len() >= 2 && head[0] == 0x15 && head[1] == 0x03 {
        "it answered with a TLS alert (a TLS port: write mqtts://)".to_string()
    } else if head.len() >= 4 && head[0] == 0x20 && head[1] == 0x02 {
        // An MQTT 3.1.1 CONNACK (two bytes, no properties): 0x01 refuses
        // the protocol version.
        "it answered as an MQTT 3.1.1 broker; mqrpc needs MQTT v5".to_string()
    } else if head.len() >= 4
        && head
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        // Printable bytes where a CONNACK should be: another text protocol
        // (a web server answering as HTTP/0.9, SMTP, Redis...).
        let text = String::from_utf8_lossy(head);
        format!("it answered in text, `{}`…", text.trim_end().escape_debug())
    } else {
        format!("it sent {what}")
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the peer did not answer as an MQTT v5 broker: {seen}; is it an MQTT v5 broker port?"
        ),
    )
}

/// The name of a packet type, for errors.
fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Auth(_) => "AUTH",
        Packet::Connect(..) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq(_) => "PINGREQ",
        Packet::PingResp(_) => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
    }
}
