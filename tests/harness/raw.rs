//! A hand-driven rumqttc v5 peer, standing in for a non-mqrpc program (a
//! Python script, mosquitto_rr) that speaks the documented protocol.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

/// A raw MQTT v5 client with the messages it received.
pub struct RawPeer {
    pub client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Packet>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl RawPeer {
    /// Connects to `127.0.0.1:port` and subscribes `filters` (QoS 1),
    /// returning after every SUBACK.
    pub async fn connect(port: u16, filters: &[&str]) -> RawPeer {
        Self::connect_as(port, None, filters).await
    }

    /// [`connect`](Self::connect) with a username and password.
    pub async fn connect_as(
        port: u16,
        credentials: Option<(&str, &str)>,
        filters: &[&str],
    ) -> RawPeer {
        let id = format!(
            "raw-peer-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_max_packet_size(Some(1 << 20));
        if let Some((user, password)) = credentials {
            options.set_credentials(user, password);
        }
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, incoming) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(packet).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("raw peer lost its connection: {e}"),
                }
            }
        });
        let mut peer = RawPeer {
            client,
            incoming,
            task,
        };
        for filter in filters {
            peer.client
                .subscribe(filter.to_string(), QoS::AtLeastOnce)
                .await
                .unwrap();
            loop {
                match peer.next_packet(Duration::from_secs(5)).await {
                    Some(Packet::SubAck(_)) => break,
                    Some(_) => continue,
                    None => panic!("no SUBACK for {filter}"),
                }
            }
        }
        peer
    }

    async fn next_packet(&mut self, wait: Duration) -> Option<Packet> {
        tokio::time::timeout(wait, self.incoming.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next PUBLISH received within `wait`, if any.
    pub async fn next_publish(&mut self, wait: Duration) -> Option<Publish> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_packet(left).await? {
                Packet::Publish(publish) => return Some(publish),
                _ => continue,
            }
        }
    }

    /// Publishes with QoS 1 and the given properties.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        properties: PublishProperties,
    ) {
        self.publish_qos(topic, QoS::AtLeastOnce, payload, properties)
            .await
    }

    /// Publishes with this QoS and the given properties.
    pub async fn publish_qos(
        &self,
        topic: &str,
        qos: QoS,
        payload: impl Into<Bytes>,
        properties: PublishProperties,
    ) {
        self.client
            .publish_with_properties(topic, qos, false, payload.into(), properties)
            .await
            .unwrap();
    }

    /// Subscribes `filter` with this maximum QoS, returning after its SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client
            .subscribe(filter.to_string(), qos)
            .await
            .unwrap();
        loop {
            match self.next_packet(Duration::from_secs(5)).await {
                Some(Packet::SubAck(_)) => return,
                Some(_) => continue,
                None => panic!("no SUBACK for {filter}"),
            }
        }
    }
}

/// Properties of a well-formed request.
pub fn request_properties(
    response_topic: &str,
    correlation: &[u8],
    content_type: Option<&str>,
) -> PublishProperties {
    PublishProperties {
        response_topic: Some(response_topic.to_string()),
        correlation_data: Some(Bytes::copy_from_slice(correlation)),
        content_type: content_type.map(str::to_string),
        ..PublishProperties::default()
    }
}

/// The status of a response: its `mqrpc-status` user property, `ok` when
/// absent (PROTOCOL.md: servers leave out the default).
pub fn status_of(publish: &Publish) -> Option<String> {
    let status = publish
        .properties
        .as_ref()
        .and_then(|p| p.user_properties.iter().find(|(k, _)| k == "mqrpc-status"))
        .map(|(_, v)| v.clone());
    Some(status.unwrap_or_else(|| "ok".to_string()))
}

/// The Content Type of a publish.
pub fn content_type_of(publish: &Publish) -> Option<String> {
    publish.properties.as_ref()?.content_type.clone()
}

/// The Correlation Data of a publish.
pub fn correlation_of(publish: &Publish) -> Option<Bytes> {
    publish.properties.as_ref()?.correlation_data.clone()
}
