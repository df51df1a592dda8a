//! A service crate that depends on `mqrpc` alone, renamed `rpc` (lean
//! default build, no direct `serde`): everything the generated code needs
//! comes through the path `crate = "::rpc"` names.

/// A thermostat: plain types, a typed error, a stream and a one-way call.
#[rpc::service(crate = "::rpc")]
pub trait Thermostat {
    /// The current temperature in tenths of a degree.
    async fn read(&self, room: String) -> Option<i32>;
    /// Sets the target, refused outside 5.0..=30.0 °C.
    async fn set(&self, room: String, tenths: i32) -> Result<i32, String>;
    /// The last `n` readings.
    async fn history(&self, n: u32) -> rpc::Stream<i32>;
    /// A raw identifier as an argument: `type` on the wire.
    async fn label(&self, r#type: String, r#match: u32) -> String;
    /// Fire and forget.
    #[mqrpc(oneway)]
    async fn nudge(&self, rooms: Vec<String>);
}

/// A fixed-reading implementation.
pub struct Fixed;

impl Thermostat for Fixed {
    async fn read(&self, room: String) -> Option<i32> {
        (room == "kitchen").then_some(215)
    }
    async fn set(&self, _room: String, tenths: i32) -> Result<i32, String> {
        if (50..=300).contains(&tenths) {
            Ok(tenths)
        } else {
            Err(format!("{tenths} is out of range"))
        }
    }
    async fn history(&self, n: u32) -> rpc::Stream<i32> {
        rpc::Stream::iter(0..n as i32)
    }
    async fn label(&self, r#type: String, r#match: u32) -> String {
        format!("{type}:{match}", type = r#type, match = r#match)
    }
    async fn nudge(&self, _rooms: Vec<String>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc::StreamExt;
    use rpc::{Codec, Service, Status};

    #[tokio::test]
    async fn the_generated_server_answers_without_a_broker() {
        let server = ThermostatServer::new(Fixed);
        let reply = server
            .call("read", Codec::Json, br#"{"room": "kitchen"}"#)
            .await;
        assert_eq!(reply.status(), Status::Ok);
        assert_eq!(reply.payload(), b"215");
        let reply = server
            .call("set", Codec::Json, br#"{"room": "hall", "tenths": 900}"#)
            .await;
        assert_eq!(reply.status(), Status::Error);
        assert_eq!(reply.payload(), br#""900 is out of range""#);
        let reply = server
            .call("label", Codec::Json, br#"{"type": "t", "match": 2}"#)
            .await;
        assert_eq!(reply.payload(), br#""t:2""#);
        // Postcard: the arguments in declaration order.
        let args = Codec::Postcard
            .encode(&("hall".to_string(), 210i32))
            .unwrap();
        let reply = server.call("set", Codec::Postcard, &args).await;
        assert_eq!(reply.status(), Status::Ok);
        assert_eq!(Codec::Postcard.decode::<i32>(reply.payload()).unwrap(), 210);
    }

    /// The generated client, through a broker: raw identifiers travel under
    /// their plain names, in both codecs.
    #[tokio::test]
    async fn the_generated_client_calls_the_generated_server() {
        let conn = rpc::Connection::from_env_or_embedded().await.unwrap();
        let _server = ThermostatServer::new(Fixed).serve(&conn).await.unwrap();
        for codec in [Codec::Postcard, Codec::Json] {
            let options = rpc::ClientOptions::default().codec(codec);
            let client = ThermostatClient::with_options(&conn, options)
                .await
                .unwrap();
            assert_eq!(client.read("kitchen".into()).await.unwrap(), Some(215));
            assert_eq!(
                client.set("hall".into(), 900).await.unwrap(),
                Err("900 is out of range".into())
            );
            assert_eq!(client.label("t".into(), 2).await.unwrap(), "t:2");
            let history: Vec<i32> = client
                .history(3)
                .await
                .unwrap()
                .map(Result::unwrap)
                .collect()
                .await;
            assert_eq!(history, [0, 1, 2]);
        }
    }
}
