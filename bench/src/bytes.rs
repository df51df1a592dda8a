//! Bytes through chunked calls: `echo` of 64 KiB, 1 MiB and 16 MiB through
//! a Mosquitto capping packets at 256 KiB (`max_packet_size 262144`),
//! against the floor of raw rumqttc echoing the same bytes, in packets of
//! the same size, through the same broker (no flow control, no
//! reassembly, no checks). MiB/s of payload echoed, and the process's RSS
//! peak over its level before each call.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use serde_json::json;
use tokio::sync::mpsc;

use crate::measure::rss_bytes;
use crate::systems::{instance_tag, raw_options, raw_subscribe};

/// The broker's Maximum Packet Size in this scenario.
pub const CAP: u32 = 262_144;

/// Payload bytes per raw packet: what an mqrpc chunk carries at this cap,
/// about (a chunk's properties take a hundred bytes or so).
const RAW_SLICE: usize = CAP as usize - 512;

/// Sizes echoed, with their names in the ratios.
const SIZES: [(&str, usize); 3] = [("64kib", 64 << 10), ("1mib", 1 << 20), ("16mib", 16 << 20)];

/// Bytes serialized as bytes (postcard: a length and a copy), not as a
/// sequence of numbers.
struct Blob(Vec<u8>);

impl serde::Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Blob, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Blob, E> {
                Ok(Blob(bytes.to_vec()))
            }
            fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(bytes))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

/// The bytes back.
struct Echo;

impl mqrpc::Service for Echo {
    const NAME: &'static str = "BytesEcho";
    const METHODS: &'static [&'static str] = &["echo"];

    async fn call(&self, _method: &str, codec: mqrpc::Codec, payload: &[u8]) -> mqrpc::Reply {
        match codec.decode::<Blob>(payload) {
            Ok(blob) => mqrpc::Reply::ok(codec, &blob),
            Err(e) => mqrpc::Reply::bad_request(e),
        }
    }
}

/// A raw echo: a peer republishing every packet it receives, and a client
/// that publishes a payload in slices and waits for all its bytes back.
struct RawEcho {
    client: AsyncClient,
    request_topic: String,
    received: mpsc::UnboundedReceiver<usize>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RawEcho {
    async fn start(port: u16) -> Result<RawEcho, String> {
        let tag = instance_tag();
        let request_topic = format!("bench/bytes-{tag}/req");
        let reply_topic = format!("bench/bytes-{tag}/resp");
        let (peer, mut peer_loop) =
            AsyncClient::new(raw_options(&format!("bytes-peer-{tag}"), port), 1024);
        raw_subscribe(&peer, &mut peer_loop, &request_topic, QoS::AtLeastOnce).await?;
        let (client, mut client_loop) =
            AsyncClient::new(raw_options(&format!("bytes-cli-{tag}"), port), 1024);
        raw_subscribe(&client, &mut client_loop, &reply_topic, QoS::AtLeastOnce).await?;
        let (forward, mut to_echo) = mpsc::unbounded_channel::<Bytes>();
        let peer_poll = tokio::spawn(async move {
            while let Ok(event) = peer_loop.poll().await {
                if let Event::Incoming(Packet::Publish(publish)) = event {
                    let _ = forward.send(publish.payload);
                }
            }
        });
        let echo = tokio::spawn(async move {
            while let Some(payload) = to_echo.recv().await {
                let _ = peer
                    .publish(reply_topic.clone(), QoS::AtLeastOnce, false, payload)
                    .await;
            }
        });
        let (counts, received) = mpsc::unbounded_channel();
        let client_poll = tokio::spawn(async move {
            while let Ok(event) = client_loop.poll().await {
                if let Event::Incoming(Packet::Publish(publish)) = event {
                    let _ = counts.send(publish.payload.len());
                }
            }
        });
        Ok(RawEcho {
            client,
            request_topic,
            received,
            _tasks: vec![peer_poll, echo, client_poll],
        })
    }

    async fn echo(&mut self, data: &Bytes) -> Result<(), String> {
        let mut start = 0;
        while start < data.len() {
            let end = (start + RAW_SLICE).min(data.len());
            self.client
                .publish(
                    self.request_topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    data.slice(start..end),
                )
                .await
                .map_err(|e| e.to_string())?;
            start = end;
        }
        let mut back = 0;
        while back < data.len() {
            match tokio::time::timeout(Duration::from_secs(60), self.received.recv()).await {
                Ok(Some(n)) => back += n,
                _ => return Err("raw echo: bytes missing after 60 s".into()),
            }
        }
        Ok(())
    }
}

/// The highest RSS seen since the last reset, sampled every 2 ms.
struct RssPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssPeak {
    fn start() -> RssPeak {
        let peak = Arc::new(AtomicU64::new(rss_bytes()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        RssPeak { peak, stop }
    }

    /// From now on, the peak over the current RSS.
    fn reset(&self) -> u64 {
        let now = rss_bytes();
        self.peak.store(now, Ordering::Relaxed);
        now
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(rss_bytes())
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the scenario: rows (size, system, MiB/s, median ms, RSS growth),
/// the ratios `mqrpc_vs_raw_bytes_<size>` and notes.
pub async fn measure(quick: bool) -> (Vec<serde_json::Value>, serde_json::Value, Vec<String>) {
    let mut notes = Vec::new();
    let broker = match crate::brokers::mosquitto_with(&format!("max_packet_size {CAP}")) {
        Ok(broker) => broker,
        Err(e) => {
            notes.push(format!("bytes: Mosquitto missing: {e}"));
            return (Vec::new(), json!({}), notes);
        }
    };
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    // The window both sides grant (`MQRPC_BENCH_WINDOW`, default the
    // library's 8 chunks).
    let window = std::env::var("MQRPC_BENCH_WINDOW")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(mqrpc::Chunking::default().get_window());
    let chunking = mqrpc::Chunking::default().window(window);
    notes.push(format!("bytes: window {window} chunks"));
    let setup = async {
        let server_conn = mqrpc::Connection::connect_url(&url).await?;
        let options = mqrpc::ServerOptions::default()
            .max_request_size(64 << 20)
            .max_reassembly_bytes(128 << 20)
            .chunking(chunking);
        let server = mqrpc::serve(&server_conn, Echo, options).await?;
        let conn = mqrpc::Connection::connect_url(&url).await?;
        let options = mqrpc::ClientOptions::default()
            .timeout(Duration::from_secs(120))
            .max_response_size(64 << 20)
            .chunking(chunking);
        let client = mqrpc::Client::new(&conn, "BytesEcho", options).await?;
        Ok::<_, mqrpc::Error>((server_conn, server, conn, client))
    };
    let (_server_conn, _server, _conn, client) = match setup.await {
        Ok(parts) => parts,
        Err(e) => {
            notes.push(format!("bytes: mqrpc setup failed: {e}"));
            return (Vec::new(), json!({}), notes);
        }
    };
    let mut raw = match RawEcho::start(broker.port).await {
        Ok(raw) => raw,
        Err(e) => {
            notes.push(format!("bytes: raw setup failed: {e}"));
            return (Vec::new(), json!({}), notes);
        }
    };
    let rss = RssPeak::start();
    let mut rows = Vec::new();
    let mut ratios = serde_json::Map::new();
    for (name, size) in SIZES {
        let reps = match (quick, size) {
            (true, s) if s >= 16 << 20 => 3,
            (true, s) if s >= 1 << 20 => 10,
            (true, _) => 50,
            (false, s) if s >= 16 << 20 => 7,
            (false, s) if s >= 1 << 20 => 40,
            (false, _) => 200,
        };
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let bytes = Bytes::from(data.clone());
        let (mut mqrpc_s, mut raw_s) = (Vec::new(), Vec::new());
        let (mut mqrpc_rss, mut raw_rss) = (0u64, 0u64);
        let mut failed = None;
        // Interleaved: both see the same machine state.
        for _ in 0..reps {
            let base = rss.reset();
            let started = Instant::now();
            match client.call::<_, Blob>("echo", &Blob(data.clone())).await {
                Ok(back) if back.0 == data => mqrpc_s.push(started.elapsed().as_secs_f64()),
                Ok(_) => failed = Some("mqrpc: other bytes came back".to_string()),
                Err(e) => failed = Some(format!("mqrpc: {e}")),
            }
            mqrpc_rss = mqrpc_rss.max(rss.peak().saturating_sub(base));
            let base = rss.reset();
            let started = Instant::now();
            match raw.echo(&bytes).await {
                Ok(()) => raw_s.push(started.elapsed().as_secs_f64()),
                Err(e) => failed = Some(e),
            }
            raw_rss = raw_rss.max(rss.peak().saturating_sub(base));
            if failed.is_some() {
                break;
            }
        }
        if let Some(failure) = failed {
            notes.push(format!("bytes {name}: {failure}"));
            continue;
        }
        let mib = size as f64 / (1 << 20) as f64;
        let (mqrpc_median, raw_median) = (median(&mut mqrpc_s), median(&mut raw_s));
        for (system, median_s, growth) in [
            ("mqrpc", mqrpc_median, mqrpc_rss),
            ("raw-rumqttc", raw_median, raw_rss),
        ] {
            eprintln!(
                "bytes {name:<6} {system:<12} {:>8.1} MiB/s  median {:>8.2} ms  RSS peak +{:.1} MiB",
                mib / median_s,
                median_s * 1e3,
                growth as f64 / (1 << 20) as f64
            );
            rows.push(json!({
                "scenario": format!("echo_{name}"),
                "system": system,
                "bytes": size,
                "calls": reps,
                "mib_per_s": mib / median_s,
                "median_ms": median_s * 1e3,
                "rss_peak_growth_bytes": growth,
            }));
        }
        ratios.insert(
            format!("mqrpc_vs_raw_bytes_{name}"),
            json!(raw_median / mqrpc_median),
        );
    }
    (rows, serde_json::Value::Object(ratios), notes)
}
