//! An answer as it came off the wire, and its decoding into the method's
//! declared type.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde::de::DeserializeOwned;

use crate::protocol::{Status, CREDIT_PROPERTY, INSTANCE_PROPERTY, SEQ_PROPERTY, STATUS_PROPERTY};
use crate::{Codec, Error, Metadata};

/// A response as it came off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    /// The `mqrpc-status` user property (absent means [`Status::Ok`]).
    pub status: Status,
    /// The codec of the payload, from the Content Type.
    pub codec: Codec,
    /// The payload: the encoded value for [`Status::Ok`] / [`Status::Error`],
    /// a UTF-8 message otherwise.
    pub payload: Bytes,
    /// The answering server's instance id (`mqrpc-instance`), sent on
    /// answers to broadcasts and on stream items.
    pub instance: Option<String>,
    /// Position of a stream item (`mqrpc-seq`), from 0; the end marker
    /// carries the number of items.
    pub seq: Option<u64>,
    /// On a [`Status::Credit`] grant (`mqrpc-credit`): how many more items
    /// a caller streaming to the server may send.
    pub credit: Option<u32>,
    /// The answer's metadata (`md-` user properties).
    metadata: Metadata,
}

impl Response {
    pub(super) fn from_publish(
        publish: Publish,
        properties: PublishProperties,
    ) -> Result<Response, Error> {
        let mut status = None;
        let mut instance = None;
        let mut seq = None;
        let mut credit = None;
        let mut metadata = Metadata::new();
        for (key, value) in properties.user_properties {
            match key.as_str() {
                STATUS_PROPERTY => status = Some(value),
                INSTANCE_PROPERTY => instance = Some(value),
                SEQ_PROPERTY => seq = value.parse().ok(),
                CREDIT_PROPERTY => credit = value.trim().parse().ok(),
                _ => {
                    metadata.take_property(&key, &value);
                }
            }
        }
        let mut response = Response::from_parts(
            status.as_deref(),
            properties.content_type.as_deref(),
            publish.payload,
        )?;
        response.instance = instance;
        response.seq = seq;
        response.credit = credit;
        response.metadata = metadata;
        Ok(response)
    }

    /// An answer from its status (`None`: ok), Content Type and payload:
    /// one answer of a batch answer, or the core of a single one.
    pub(super) fn from_parts(
        status: Option<&str>,
        content_type: Option<&str>,
        payload: Bytes,
    ) -> Result<Response, Error> {
        let status = match status {
            None => Status::Ok,
            Some(value) => Status::parse(value).ok_or_else(|| Error::Protocol {
                reason: format!("unknown {STATUS_PROPERTY} `{value}`"),
            })?,
        };
        let codec = if status.has_encoded_payload() {
            Codec::from_content_type(content_type)?
        } else {
            Codec::default()
        };
        Ok(Response {
            status,
            codec,
            payload,
            instance: None,
            seq: None,
            credit: None,
            metadata: Metadata::new(),
        })
    }

    /// The answer's metadata, set by the handler (PROTOCOL.md, "Call
    /// metadata"); empty if it set none.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The value of a method returning `T`, or the framework error the
    /// response carries.
    pub fn into_value<T: DeserializeOwned>(self, method: &str) -> Result<T, Error> {
        match self.status {
            Status::Ok => self.codec.decode(&self.payload),
            Status::Error => Err(Error::Protocol {
                reason: format!("`{method}` returned an application error but declares none"),
            }),
            _ => Err(self.framework_error(method)),
        }
    }

    /// The outcome of a method returning `Result<T, E>`: `Ok(Err(e))` for
    /// its typed error, `Err` for a framework error.
    pub fn into_result<T: DeserializeOwned, E: DeserializeOwned>(
        self,
        method: &str,
    ) -> Result<Result<T, E>, Error> {
        match self.status {
            Status::Ok => self.codec.decode(&self.payload).map(Ok),
            Status::Error => self.codec.decode(&self.payload).map(Err),
            _ => Err(self.framework_error(method)),
        }
    }

    fn message(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// Turns a non-success status into its [`Error`]. `deadline-exceeded`
    /// does not get here: the call turns it into [`Error::Timeout`].
    fn framework_error(&self, method: &str) -> Error {
        let message = self.message();
        match self.status {
            Status::UnknownMethod => Error::UnknownMethod {
                method: method.to_string(),
            },
            Status::BadRequest => Error::BadRequest { message },
            Status::UnsupportedContentType => Error::UnsupportedContentType { message },
            Status::Internal => Error::Internal { message },
            Status::Overloaded => Error::Overloaded { message },
            Status::TooLarge => Error::TooLarge { message },
            Status::Unauthenticated => Error::Unauthenticated { message },
            Status::PermissionDenied => Error::PermissionDenied { message },
            Status::ResourceExhausted => Error::ResourceExhausted { message },
            Status::RetryRefused => Error::RetryRefused {
                method: method.to_string(),
                message,
            },
            Status::SchemaMismatch => {
                // "client <fingerprint>, server <fingerprint>"
                let mut words = message.split([' ', ',']).filter(|w| !w.is_empty());
                let mut after = |label: &str| {
                    words
                        .by_ref()
                        .skip_while(|w| *w != label)
                        .nth(1)
                        .unwrap_or("?")
                        .to_string()
                };
                let client = after("client");
                let server = after("server");
                Error::SchemaMismatch {
                    method: method.to_string(),
                    client,
                    server,
                }
            }
            Status::Ok
            | Status::Error
            | Status::DeadlineExceeded
            | Status::End
            | Status::Credit => Error::Protocol {
                reason: format!("unexpected status {}", self.status),
            },
        }
    }
}
