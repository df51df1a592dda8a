//! Brokers the benchmark starts itself, on loopback, and stops on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A broker process we started; killed by PID on drop.
pub struct Process {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Set when the broker is no longer running (e.g. killed from outside):
    /// every figure measured through it after that is void.
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_listening(child: &mut Child, port: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited with {status}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{what} did not listen within 10 s"))
}

/// Mosquitto with TCP_NODELAY on and otherwise default settings (Receive
/// Maximum 20), as users run it.
pub fn mosquitto() -> Result<Process, String> {
    mosquitto_with("")
}

/// Mosquitto as [`mosquitto`], with one more line of configuration.
pub fn mosquitto_with(extra: &str) -> Result<Process, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let config = dir.path().join("mosquitto.conf");
    std::fs::write(
        &config,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\nlog_dest none\n{extra}\n"),
    )
    .map_err(|e| e.to_string())?;
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("mosquitto: {e} (apt-get install mosquitto)"))?;
    wait_listening(&mut child, port, "mosquitto")?;
    Ok(Process {
        child,
        port,
        _dir: dir,
    })
}

/// nats-server (Debian package `nats-server`) on loopback.
pub fn nats_server() -> Result<Process, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let mut child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("nats-server: {e} (apt-get install nats-server)"))?;
    wait_listening(&mut child, port, "nats-server")?;
    Ok(Process {
        child,
        port,
        _dir: dir,
    })
}
