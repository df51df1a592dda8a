//! What the code `#[mqrpc::service]` generates calls: every kind of call
//! with the method's declared QoS (`#[mqrpc(qos = ..)]`) and schema
//! fingerprint, behind one hidden entry point, [`Client::__private`].

use serde::{de::DeserializeOwned, Serialize};

use super::{Answers, Client, Items, Response};
use crate::protocol::QoS;
use crate::Error;

/// Calls of generated clients (`client.__private().call(..)`). Not a
/// public API and not covered by semver: use [`Client`]'s methods or a
/// generated client.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Generated<'a>(pub(super) &'a Client);

impl Generated<'_> {
    /// [`Client::call`] with the method's QoS and schema fingerprint.
    pub async fn call<A, T>(
        self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
    ) -> Result<T, Error>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.0
            .call_encoded(method, qos, schema, args)
            .await?
            .into_value(method)
    }

    /// [`Client::call_fallible`] with the method's QoS and schema fingerprint.
    pub async fn call_fallible<A, T, E>(
        self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
    ) -> Result<Result<T, E>, Error>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        self.0
            .call_encoded(method, qos, schema, args)
            .await?
            .into_result(method)
    }

    /// [`Client::notify`] with the method's QoS and schema fingerprint.
    pub async fn notify<A: Serialize + ?Sized>(
        self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
    ) -> Result<(), Error> {
        self.0.notify_encoded(method, qos, schema, args).await
    }

    /// [`Client::stream`] with the method's QoS and schema fingerprint.
    pub async fn stream<A, T>(
        self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
    ) -> Result<Items<T>, Error>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.0.stream_encoded(method, qos, schema, args).await
    }

    /// [`Client::broadcast`] with the method's QoS and schema fingerprint,
    /// decoding each answer with `decode` ([`Response::into_value`] or
    /// [`Response::into_result`]).
    pub async fn broadcast<A, T>(
        self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
        max_answers: Option<usize>,
        decode: fn(Response, &str) -> Result<T, Error>,
    ) -> Result<Answers<T>, Error>
    where
        A: Serialize + ?Sized,
    {
        self.0
            .broadcast_encoded(method, qos, schema, args, max_answers, decode)
            .await
    }
}
