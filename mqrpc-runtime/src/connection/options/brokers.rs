//! Several broker addresses in one URL: `mqtt://h1:1883,h2:1884` — the
//! nodes of a clustered broker, tried in turn.

use super::{host_and_port, ConnectOptions, Scheme};

impl ConnectOptions {
    /// Adds a broker to try when the ones before it fail: the nodes of a
    /// clustered broker, each with this options' credentials, TLS and
    /// WebSocket settings. `mqtt://h1:1883,h2:1884` in
    /// [`from_url`](Self::from_url) (and so in `MQRPC_BROKER`) does the
    /// same. IPv6 hosts with or without brackets.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::ConnectOptions;
    /// let opts = ConnectOptions::new("node1", 1883)
    ///     .fallback_broker("node2", 1883)
    ///     .fallback_broker("::1", 1884);
    /// assert_eq!(opts.broker_address(), "node1:1883"); // the primary
    /// ```
    pub fn fallback_broker(mut self, host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        self.fallbacks.push((bare_host(&host).to_string(), port));
        self
    }

    /// Every broker to try, in order: the primary (`host`, `port`), then
    /// the [fallbacks](Self::fallback_broker). Hosts without brackets.
    pub(crate) fn brokers(&self) -> Vec<(String, u16)> {
        std::iter::once((self.host.clone(), self.port))
            .chain(self.fallbacks.iter().cloned())
            .collect()
    }
}

/// Splits `scheme://[user[:password]@]h1[:p1],h2[:p2]…[/path][?query]`
/// into the URL of the first broker (credentials, path and query kept)
/// and the further `host[:port]` entries, in order. A URL with one host
/// comes back as it is, with no further entries. `Err` is the reason.
pub(super) fn split_hosts(url: &str) -> Result<(String, Vec<String>), String> {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return Ok((url.to_string(), Vec::new()));
    };
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let hosts_start = authority.rfind('@').map_or(start, |at| start + at + 1);
    let hosts = &url[hosts_start..end];
    if !hosts.contains(',') {
        return Ok((url.to_string(), Vec::new()));
    }
    let mut entries = hosts.split(',').map(str::trim);
    let first = entries.next().unwrap_or_default();
    let rest: Vec<String> = entries.map(str::to_string).collect();
    if first.is_empty() || rest.iter().any(String::is_empty) {
        return Err(
            "empty entry in the broker list (write `host[:port],host[:port]` after the scheme)"
                .to_string(),
        );
    }
    let primary = format!("{}{first}{}", &url[..hosts_start], &url[end..]);
    Ok((primary, rest))
}

/// Host (IPv6 without brackets) and port of one further entry of a broker
/// list, the scheme's default port when it names none. `Err` is the reason.
pub(super) fn parse_entry(entry: &str, scheme: Scheme) -> Result<(String, u16), String> {
    let bad = |why: &str| format!("broker address `{entry}` in the list: {why}");
    let parsed = url::Url::parse(&format!("{}://{entry}", scheme.as_str()))
        .map_err(|e| bad(&e.to_string()))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("credentials go once, before the first host"));
    }
    host_and_port(&parsed, scheme).ok_or_else(|| bad("no host"))
}

/// `host` without the brackets of an IPv6 literal.
fn bare_host(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use crate::{ConnectOptions, Error};

    fn brokers(url: &str) -> Vec<(String, u16)> {
        ConnectOptions::from_url(url)
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .brokers()
    }

    fn reason(url: &str) -> String {
        match ConnectOptions::from_url(url) {
            Err(Error::InvalidUrl { url: named, reason }) => {
                assert_eq!(named, url, "the error names the whole URL");
                reason
            }
            other => panic!("{url}: expected InvalidUrl, got {other:?}"),
        }
    }

    fn pair(host: &str, port: u16) -> (String, u16) {
        (host.to_string(), port)
    }

    #[test]
    fn one_host_is_one_broker() {
        assert_eq!(brokers("mqtt://h1:1884"), vec![pair("h1", 1884)]);
        assert_eq!(brokers("mqtt://h1"), vec![pair("h1", 1883)]);
    }

    #[test]
    fn a_list_keeps_its_order_and_default_ports() {
        assert_eq!(
            brokers("mqtt://h1:1883,h2:1884,10.0.0.3"),
            vec![pair("h1", 1883), pair("h2", 1884), pair("10.0.0.3", 1883)]
        );
        let opts = ConnectOptions::from_url("mqtt://h1:1883,h2:1884").unwrap();
        assert_eq!(opts.broker_address(), "h1:1883", "the first is the primary");
    }

    #[test]
    fn credentials_query_and_path_apply_to_every_broker() {
        let opts =
            ConnectOptions::from_url("mqtt://svc:pa%2Css@h1:1883,h2:1884?client_id=billing-1")
                .unwrap();
        assert_eq!(opts.brokers(), vec![pair("h1", 1883), pair("h2", 1884)]);
        assert_eq!(
            opts.credentials,
            Some(("svc".to_string(), "pa,ss".to_string()))
        );
        assert_eq!(opts.get_client_id(), Some("billing-1"));
    }

    #[cfg(feature = "websocket")]
    #[test]
    fn websocket_lists_share_the_path() {
        let opts = ConnectOptions::from_url("ws://h1:8080,h2/mqtt").unwrap();
        assert_eq!(opts.brokers(), vec![pair("h1", 8080), pair("h2", 80)]);
        assert_eq!(opts.websocket_path.as_deref(), Some("/mqtt"));
    }

    #[test]
    fn ipv6_hosts_in_brackets() {
        assert_eq!(
            brokers("mqtt://[::1]:1883,[fe80::2]:1884,[::3]"),
            vec![pair("::1", 1883), pair("fe80::2", 1884), pair("::3", 1883)]
        );
        let built = ConnectOptions::new("h1", 1883).fallback_broker("[::1]", 1884);
        assert_eq!(built.brokers(), vec![pair("h1", 1883), pair("::1", 1884)]);
    }

    #[test]
    fn builder_appends_in_order() {
        let opts = ConnectOptions::new("h1", 1883)
            .fallback_broker("h2", 1884)
            .fallback_broker("h3", 1885);
        assert_eq!(
            opts.brokers(),
            vec![pair("h1", 1883), pair("h2", 1884), pair("h3", 1885)]
        );
        let shown = format!("{opts:?}");
        assert!(shown.contains("h3"), "{shown}");
    }

    #[test]
    fn bad_entries_are_clear_errors() {
        for url in [
            "mqtt://h1,,h2",
            "mqtt://h1,",
            "mqtt://,h2",
            "mqtt://u:p@,h2",
        ] {
            let why = reason(url);
            assert!(why.contains("empty entry"), "{url}: {why}");
        }
        let why = reason("mqtt://h1:1883,h2:port");
        assert!(why.contains("`h2:port`"), "{why}");
        let why = reason("mqtt://h1:1883,h2:99999");
        assert!(why.contains("`h2:99999`"), "{why}");
        let why = reason("mqtt://h1:1883,[::1:1884");
        assert!(why.contains("`[::1:1884`"), "{why}");
        let why = reason("mqtt://h1:notaport,h2:1884");
        assert!(why.contains("port"), "{why}");
        let why = reason("http://h1,h2");
        assert!(why.contains("scheme"), "{why}");
    }
}
