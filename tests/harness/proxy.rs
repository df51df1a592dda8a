//! A fault-injecting TCP proxy (toxiproxy-style) to put between a client or
//! server and the broker: delay with jitter, bandwidth limit, stall,
//! half-open (traffic silently dropped: no FIN, no RST), black hole of one
//! direction, cut (connections closed) and refusal of new connections.
//!
//! A TCP proxy cannot lose segments: the bytes it reads were already
//! acknowledged to their sender. What loss does to a TCP stream is delay:
//! the lost segment is sent again after a retransmission timeout, and the
//! bytes behind it wait (head-of-line blocking). [`Faults::loss`] models
//! exactly that: with the given probability a chunk waits for its
//! retransmission (doubled on each further "loss" of the same chunk), and
//! everything behind it waits with it. [`Faults::lossy`] makes that wait
//! one round trip of the modelled link (fast retransmit after duplicate
//! ACKs, what a busy stream sees); a retransmission *timeout* (200 ms and
//! more on Linux) only follows a loss at the tail of a burst, and charging
//! it for every loss made a busy stream fall behind without end. Real
//! packet loss is made by the kernel in the network namespaces of
//! [`crate::netns`].
//!
//! The proxy listens on `127.0.0.1` of the network namespace it is started
//! in (the thread's), and runs on the current Tokio runtime.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

/// Which way bytes flow through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the connecting side (client or server) to the broker.
    Up,
    /// From the broker to the connecting side.
    Down,
}

/// Retransmission-delay model of packet loss on a TCP stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loss {
    /// Probability that a chunk is "lost" (waits for a retransmission).
    pub probability: f64,
    /// How long the first retransmission takes (a round trip for a fast
    /// retransmit; a timeout, at least 200 ms on Linux, for a tail loss).
    pub rto: Duration,
}

/// The faults in force; the same for both directions unless named.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Every chunk waits this long...
    pub delay: Duration,
    /// ... plus or minus up to this (uniform); order is kept.
    pub jitter: Duration,
    /// Bytes per second, per direction and connection.
    pub rate: Option<u64>,
    /// See [`Loss`].
    pub loss: Option<Loss>,
    /// Nothing is forwarded and bytes pile up (up to a bounded buffer,
    /// then TCP flow control) until the stall ends.
    pub stall: bool,
    /// The same, for bytes going up only (the broker still sends).
    pub stall_up: bool,
    /// The same, for bytes coming down only.
    pub stall_down: bool,
    /// Bytes going up are read and thrown away.
    pub drop_up: bool,
    /// Bytes coming down are read and thrown away.
    pub drop_down: bool,
    /// New connections are closed at once after accepting them.
    pub refuse: bool,
}

impl Faults {
    /// A link with this one-way delay and jitter, and loss as the delay of
    /// a fast retransmit (one round trip, `2 × delay_ms`).
    pub fn lossy(delay_ms: u64, jitter_ms: u64, loss: f64) -> Faults {
        Faults {
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss: (loss > 0.0).then_some(Loss {
                probability: loss,
                rto: Duration::from_millis((2 * delay_ms).max(1)),
            }),
            ..Faults::default()
        }
    }

    fn stalls(&self, direction: Direction) -> bool {
        self.stall
            || match direction {
                Direction::Up => self.stall_up,
                Direction::Down => self.stall_down,
            }
    }

    fn drops(&self, direction: Direction) -> bool {
        match direction {
            Direction::Up => self.drop_up,
            Direction::Down => self.drop_down,
        }
    }
}

/// What the proxy counted.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub bytes_forwarded: AtomicU64,
    pub bytes_dropped: AtomicU64,
    /// Chunks that waited for a modelled retransmission.
    pub losses: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    faults: watch::Sender<Faults>,
    connections: Mutex<Vec<AbortHandle>>,
    stats: ProxyStats,
    seed: AtomicU64,
}

/// A running proxy; stops (closing every connection) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port of `127.0.0.1` and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            faults: watch::Sender::new(Faults::default()),
            connections: Mutex::new(Vec::new()),
            stats: ProxyStats::default(),
            seed: AtomicU64::new(0x9E37_79B9_7F4A_7C15 ^ u64::from(addr.port())),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Proxy {
            addr,
            shared,
            accept,
        })
    }

    /// Where to connect instead of the broker.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://127.0.0.1:<port>` of the proxy.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// Puts these faults in force (for bytes read from now on; a stall or a
    /// drop also holds back what is already queued).
    pub fn set(&self, faults: Faults) {
        self.shared.faults.send_replace(faults);
    }

    /// Changes the faults in force.
    pub fn update(&self, change: impl FnOnce(&mut Faults)) {
        self.shared.faults.send_modify(change);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.set(Faults::default());
    }

    /// Half-open: both directions silently dropped on every connection,
    /// old and new (no FIN, no RST: each side thinks the other is there).
    pub fn half_open(&self) {
        self.update(|f| {
            f.drop_up = true;
            f.drop_down = true;
        });
    }

    /// Black hole: bytes in `direction` are swallowed.
    pub fn black_hole(&self, direction: Direction) {
        self.update(|f| match direction {
            Direction::Up => f.drop_up = true,
            Direction::Down => f.drop_down = true,
        });
    }

    /// Stall of one direction: bytes in `direction` are held (TCP flow
    /// control then stops their sender) until [`heal`](Self::heal).
    pub fn stall(&self, direction: Direction) {
        self.update(|f| match direction {
            Direction::Up => f.stall_up = true,
            Direction::Down => f.stall_down = true,
        });
    }

    /// Closes every open connection (both sides see the stream end).
    pub fn cut(&self) {
        for connection in self.shared.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// What went through.
    pub fn stats(&self) -> &ProxyStats {
        &self.shared.stats
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((downstream, _)) = listener.accept().await else {
            continue;
        };
        if shared.faults.borrow().refuse {
            drop(downstream);
            continue;
        }
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(serve(downstream, shared.clone()));
        let mut connections = shared.connections.lock().unwrap();
        connections.retain(|c| !c.is_finished());
        connections.push(task.abort_handle());
    }
}

/// Forwards one connection both ways until both directions ended (or the
/// task is aborted, which drops both sockets).
async fn serve(downstream: TcpStream, shared: Arc<Shared>) {
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        return; // downstream is dropped: the peer sees the stream end
    };
    let _ = downstream.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (down_read, down_write) = downstream.into_split();
    let (up_read, up_write) = upstream.into_split();
    tokio::join!(
        pump(down_read, up_write, Direction::Up, &shared),
        pump(up_read, down_write, Direction::Down, &shared),
    );
}

/// A chunk and the instant it may be written.
type Chunk = (Instant, Vec<u8>);

/// Chunks queued between the reader and the writer of one direction: the
/// bound of what a stall buffers before TCP flow control pushes back.
const QUEUED_CHUNKS: usize = 64;

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    shared: &Shared,
) {
    let (tx, mut rx) = mpsc::channel::<Chunk>(QUEUED_CHUNKS);
    let mut rng = Rng(shared
        .seed
        .fetch_add(0x2545_F491_4F6C_DD1D, Ordering::Relaxed)
        | 1);
    let read = async move {
        let mut last_release = Instant::now();
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let faults = shared.faults.borrow().clone();
            if faults.drops(direction) {
                shared
                    .stats
                    .bytes_dropped
                    .fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            let mut wait = faults.delay;
            if !faults.jitter.is_zero() {
                let span = faults.jitter.as_micros() as u64;
                let offset = rng.below(2 * span + 1);
                wait = (wait + Duration::from_micros(offset)).saturating_sub(faults.jitter);
            }
            if let Some(loss) = faults.loss {
                let mut rto = loss.rto;
                while rng.unit() < loss.probability {
                    shared.stats.losses.fetch_add(1, Ordering::Relaxed);
                    wait += rto;
                    rto *= 2;
                }
            }
            // Never before an earlier chunk: a stream keeps its order.
            last_release = last_release.max(Instant::now() + wait);
            if tx.send((last_release, buffer[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let write = async {
        let mut faults = shared.faults.subscribe();
        while let Some((release, bytes)) = rx.recv().await {
            tokio::time::sleep_until(release).await;
            // A stall holds the chunk until it ends.
            while faults.borrow_and_update().stalls(direction) {
                if faults.changed().await.is_err() {
                    return;
                }
            }
            let now = faults.borrow().clone();
            if now.drops(direction) {
                shared
                    .stats
                    .bytes_dropped
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                continue;
            }
            if let Some(rate) = now.rate {
                let micros = bytes.len() as u64 * 1_000_000 / rate.max(1);
                tokio::time::sleep(Duration::from_micros(micros)).await;
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
            shared
                .stats
                .bytes_forwarded
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        // The reader saw the end of the stream: pass it on, unless this
        // direction is dropped (a real half-open link loses the FIN too;
        // it arrives, retransmitted, once the link heals).
        while faults.borrow_and_update().drops(direction) {
            if faults.changed().await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// xorshift64*: enough randomness for jitter and loss, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
