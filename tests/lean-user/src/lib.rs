//! A service crate that depends on `mqrpc` alone (lean default build, no
//! direct `serde`): everything the generated code needs comes through
//! `mqrpc`.

/// A thermostat: plain types, a typed error, a stream and a one-way call.
#[mqrpc::service]
pub trait Thermostat {
    /// The current temperature in tenths of a degree.
    async fn read(&self, room: String) -> Option<i32>;
    /// Sets the target, refused outside 5.0..=30.0 °C.
    async fn set(&self, room: String, tenths: i32) -> Result<i32, String>;
    /// The last `n` readings.
    async fn history(&self, n: u32) -> mqrpc::Stream<i32>;
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
    async fn history(&self, n: u32) -> mqrpc::Stream<i32> {
        mqrpc::Stream::iter(0..n as i32)
    }
    async fn nudge(&self, _rooms: Vec<String>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqrpc::{Codec, Service, Status};

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
        // Postcard: the same arguments as the generated client encodes them.
        let args = Codec::Postcard
            .encode(&("hall".to_string(), 210i32))
            .unwrap();
        let reply = server.call("set", Codec::Postcard, &args).await;
        assert_eq!(reply.status(), Status::Ok);
        assert_eq!(Codec::Postcard.decode::<i32>(reply.payload()).unwrap(), 210);
    }
}
