//! A scripted MQTT v5 broker for transport fault tests: a TCP listener on
//! 127.0.0.1 speaking through rumqttc's codec, where the test reads every
//! packet the client sent and decides what to answer (CONNACK limits, ack
//! codes and order, dropping the link, accepting the reconnect).
//!
//! Every wait has a 10 s hang guard; nothing is timed otherwise.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    LastWill, Login, Packet, PubAck, PubAckReason, PubComp, PubRec, PubRecReason, PubRel, Publish,
    SubAck, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::{Error as CodecError, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Hang guard for every wait of the fake broker.
pub const GUARD: Duration = Duration::from_secs(10);

/// The listener.
pub struct FakeBroker {
    listener: TcpListener,
    addr: String,
}

impl FakeBroker {
    /// Listens on a free loopback port.
    pub async fn start() -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap().to_string();
        FakeBroker { listener, addr }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The next client connection (raw: CONNECT not read yet).
    pub async fn accept(&self) -> Link {
        let (stream, _) = tokio::time::timeout(GUARD, self.listener.accept())
            .await
            .expect("hang guard: no client connected")
            .expect("accept");
        Link {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            reads: 0,
        }
    }

    /// Accepts, reads CONNECT and answers with `connack`; returns the link and
    /// the CONNECT.
    pub async fn accept_with(&self, connack: Connack) -> (Link, ConnectSeen) {
        let mut link = self.accept().await;
        let connect = link.expect_connect().await;
        link.send(connack.packet()).await;
        (link, connect)
    }

    /// Accepts the client's reconnect and resumes its session: checks that
    /// the CONNECT asks to keep it (Clean Start 0) and answers Session
    /// Present 1.
    pub async fn accept_resumed(&self) -> (Link, ConnectSeen) {
        let connack = Connack {
            session_present: true,
            ..Default::default()
        };
        let (link, seen) = self.accept_with(connack).await;
        assert!(!seen.connect.clean_start, "a reconnect resumes the session");
        (link, seen)
    }
}

/// What the client sent in CONNECT.
#[derive(Debug)]
pub struct ConnectSeen {
    /// The CONNECT packet.
    pub connect: Connect,
    /// Its Last Will.
    pub will: Option<LastWill>,
    /// Its credentials.
    pub login: Option<Login>,
}

/// The CONNACK to answer with.
#[derive(Debug, Clone, Default)]
pub struct Connack {
    /// Session Present flag.
    pub session_present: bool,
    /// Receive Maximum property.
    pub receive_max: Option<u16>,
    /// Maximum Packet Size property.
    pub max_packet_size: Option<u32>,
}

impl Connack {
    /// The packet.
    pub fn packet(&self) -> Packet {
        Packet::ConnAck(ConnAck {
            session_present: self.session_present,
            code: ConnectReturnCode::Success,
            properties: Some(ConnAckProperties {
                session_expiry_interval: None,
                receive_max: self.receive_max,
                max_qos: None,
                retain_available: None,
                max_packet_size: self.max_packet_size,
                assigned_client_identifier: None,
                topic_alias_max: None,
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: None,
                subscription_identifiers_available: None,
                shared_subscription_available: None,
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            }),
        })
    }
}

/// One client connection seen from the broker side.
pub struct Link {
    stream: TcpStream,
    rbuf: BytesMut,
    /// How many socket reads returned data so far.
    pub reads: usize,
}

impl Link {
    /// The next packet from the client, or `None` at EOF / reset.
    pub async fn try_recv(&mut self) -> Option<Packet> {
        loop {
            // rumqttc's codec rejects the 2-byte DISCONNECT (no reason code,
            // meaning 0x00) that it writes itself.
            if self.rbuf.starts_with(&[0xE0, 0x00]) {
                let _ = self.rbuf.split_to(2);
                return Some(Packet::Disconnect(Disconnect::new(
                    DisconnectReasonCode::NormalDisconnection,
                )));
            }
            match Packet::read(&mut self.rbuf, None) {
                Ok(p) => return Some(p),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(e) => panic!("fake broker: client sent garbage: {e}"),
            }
            let n = tokio::time::timeout(GUARD, self.stream.read_buf(&mut self.rbuf))
                .await
                .expect("hang guard: client sent nothing");
            match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => self.reads += 1,
            }
        }
    }

    /// The next packet from the client (panics at EOF).
    pub async fn recv(&mut self) -> Packet {
        self.try_recv().await.expect("client closed the link")
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Reads CONNECT.
    pub async fn expect_connect(&mut self) -> ConnectSeen {
        match self.recv().await {
            Packet::Connect(connect, will, login) => ConnectSeen {
                connect,
                will,
                login,
            },
            other => panic!("expected CONNECT, got {other:?}"),
        }
    }

    /// Sends one packet.
    pub async fn send(&mut self, p: Packet) {
        self.send_all(&[p]).await
    }

    /// Sends packets in one write.
    pub async fn send_all(&mut self, packets: &[Packet]) {
        let mut buf = BytesMut::new();
        for p in packets {
            p.write(&mut buf, None).expect("encode");
        }
        // The client may already be gone; the test's next read says so.
        let _ = self.stream.write_all(&buf).await;
    }

    /// Sends raw bytes (a fuzzer's), whatever they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Drops the link abruptly (no DISCONNECT).
    pub fn drop_link(self) {
        drop(self)
    }
}

/// PUBACK with a numeric reason code.
pub fn puback(pkid: u16, code: u8) -> Packet {
    let mut a = PubAck::new(pkid, None);
    a.reason = match code {
        0x00 => PubAckReason::Success,
        0x10 => PubAckReason::NoMatchingSubscribers,
        0x83 => PubAckReason::ImplementationSpecificError,
        0x87 => PubAckReason::NotAuthorized,
        0x90 => PubAckReason::TopicNameInvalid,
        0x91 => PubAckReason::PacketIdentifierInUse,
        0x97 => PubAckReason::QuotaExceeded,
        0x99 => PubAckReason::PayloadFormatInvalid,
        _ => PubAckReason::UnspecifiedError,
    };
    Packet::PubAck(a)
}

/// PUBREC with a numeric reason code (0x00, 0x10 or 0x80 and up).
pub fn pubrec(pkid: u16, code: u8) -> Packet {
    let mut r = PubRec::new(pkid, None);
    r.reason = match code {
        0x00 => PubRecReason::Success,
        0x10 => PubRecReason::NoMatchingSubscribers,
        0x87 => PubRecReason::NotAuthorized,
        _ => PubRecReason::UnspecifiedError,
    };
    Packet::PubRec(r)
}

/// PUBCOMP (success).
pub fn pubcomp(pkid: u16) -> Packet {
    Packet::PubComp(PubComp::new(pkid, None))
}

/// PUBREL (success).
pub fn pubrel(pkid: u16) -> Packet {
    Packet::PubRel(PubRel::new(pkid, None))
}

/// SUBACK granting `qos` to `n` filters.
pub fn suback(pkid: u16, n: usize, qos: QoS) -> Packet {
    Packet::SubAck(SubAck {
        pkid,
        return_codes: vec![SubscribeReasonCode::Success(qos); n],
        properties: None,
    })
}

/// A PUBLISH from the broker.
pub fn publish(topic: &str, qos: QoS, pkid: u16, payload: &'static [u8]) -> Packet {
    let mut p = Publish::new(topic, qos, payload, None);
    p.pkid = pkid;
    Packet::Publish(p)
}
