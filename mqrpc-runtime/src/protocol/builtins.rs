//! Built-in methods every server answers — `_ping`, `_info`, `_stats` —
//! and what `_info` and `_stats` answer.

use serde::{Deserialize, Serialize};

use crate::protocol::{INFO_METHOD, PING_METHOD, STATS_METHOD};

/// What `_info` answers: who this server is and what it serves.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// let info = mqrpc::ServiceInfo {
///     service: "Calculator".into(),
///     version: "1.2.0".into(),
///     instance: "calc-1".into(),
///     methods: vec![mqrpc::MethodInfo { name: "add".into(), schema: Some("5c1d0e9b2f7a4e11".into()) }],
/// };
/// assert_eq!(info.methods[0].name, "add");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Wire name of the service.
    pub service: String,
    /// Version of the crate that built the server (its `CARGO_PKG_VERSION`).
    pub version: String,
    /// The server's instance id.
    pub instance: String,
    /// Its methods.
    pub methods: Vec<MethodInfo>,
}

/// One method in [`ServiceInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodInfo {
    /// Wire name.
    pub name: String,
    /// Schema fingerprint (see PROTOCOL.md).
    pub schema: Option<String>,
}

/// What `_stats` answers: per-method counts and latency since the server
/// started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStats {
    /// Wire name of the service.
    pub service: String,
    /// The server's instance id.
    pub instance: String,
    /// One entry per method.
    pub methods: Vec<MethodStats>,
}

/// One method in [`ServiceStats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodStats {
    /// Wire name.
    pub name: String,
    /// Calls answered.
    pub calls: u64,
    /// Of those, answered with a status other than `ok` and `error`.
    pub failures: u64,
    /// Of those, answered with the method's typed error (`error`).
    pub app_errors: u64,
    /// Median handler time in µs (upper bound of its power-of-two bucket).
    pub p50_us: u64,
    /// 99th percentile handler time in µs (likewise).
    pub p99_us: u64,
}

/// The built-in methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    Ping,
    Info,
    Stats,
}

impl Builtin {
    pub(crate) fn parse(method: &str) -> Option<Builtin> {
        match method {
            PING_METHOD => Some(Builtin::Ping),
            INFO_METHOD => Some(Builtin::Info),
            STATS_METHOD => Some(Builtin::Stats),
            _ => None,
        }
    }
}
