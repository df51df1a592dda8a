//! Payload encodings, chosen per message by the MQTT v5 Content Type.

use serde::{de::DeserializeOwned, Serialize};

use crate::protocol::{JSON_CONTENT_TYPE, POSTCARD_CONTENT_TYPE};
use crate::Error;

/// How arguments and results are encoded.
///
/// Requests name their codec in the Content Type property; the server
/// answers in the same one. A request without a Content Type is postcard.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::Codec;
/// let bytes = Codec::Json.encode(&(1, "two")).unwrap();
/// assert_eq!(bytes, br#"[1,"two"]"#);
/// let back: (i32, String) = Codec::Json.decode(&bytes).unwrap();
/// assert_eq!(back, (1, "two".to_string()));
/// assert_eq!(Codec::from_content_type(Some("application/json; charset=utf-8")).unwrap(), Codec::Json);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Codec {
    /// [postcard](https://docs.rs/postcard): compact, not self-describing. The default.
    #[default]
    Postcard,
    /// JSON: for peers that are not mqrpc (mosquitto_rr, Python, Node).
    Json,
}

impl Codec {
    /// The Content Type naming this codec on the wire.
    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Postcard => POSTCARD_CONTENT_TYPE,
            Codec::Json => JSON_CONTENT_TYPE,
        }
    }

    /// The codec named by a Content Type; `None` (absent) means postcard.
    /// Parameters such as `; charset=utf-8` are ignored.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Codec, Error> {
        let Some(content_type) = content_type else {
            return Ok(Codec::Postcard);
        };
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case(POSTCARD_CONTENT_TYPE) {
            Ok(Codec::Postcard)
        } else if essence.eq_ignore_ascii_case(JSON_CONTENT_TYPE) {
            Ok(Codec::Json)
        } else {
            Err(Error::Protocol {
                reason: format!(
                    "content type `{content_type}` is not supported (use {POSTCARD_CONTENT_TYPE} or {JSON_CONTENT_TYPE})"
                ),
            })
        }
    }

    /// Encodes a value.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, Error> {
        let encoded = match self {
            Codec::Postcard => postcard::to_stdvec(value).map_err(|e| e.to_string()),
            Codec::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        };
        encoded.map_err(|reason| Error::Encode { reason })
    }

    /// Decodes a value. Trailing bytes are an error: they mean the peer sent
    /// a different type, and accepting them would hide that.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, Error> {
        let decoded = match self {
            Codec::Postcard => match postcard::take_from_bytes::<T>(bytes) {
                Ok((value, [])) => Ok(value),
                Ok((_, rest)) => Err(format!(
                    "{} unexpected trailing bytes after the postcard value",
                    rest.len()
                )),
                Err(e) => Err(format!("postcard: {e}")),
            },
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| format!("json: {e}")),
        };
        decoded.map_err(|reason| Error::Decode { reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postcard_rejects_trailing_bytes() {
        let mut bytes = Codec::Postcard.encode(&7u8).unwrap();
        bytes.push(0);
        let err = Codec::Postcard.decode::<u8>(&bytes).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err}");
    }

    #[test]
    fn unknown_content_type_is_an_error() {
        assert!(Codec::from_content_type(Some("text/xml")).is_err());
        assert_eq!(Codec::from_content_type(None).unwrap(), Codec::Postcard);
        assert_eq!(
            Codec::from_content_type(Some("Application/Postcard")).unwrap(),
            Codec::Postcard
        );
    }
}
