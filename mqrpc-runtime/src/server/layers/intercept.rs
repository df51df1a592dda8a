//! The simplest layer: a check of each call before its method runs (an
//! auth check, an allow list), like tonic's interceptors.

use std::task::{Context, Poll};

use futures_util::future::Either;
use tower::Layer;

use super::{BoxError, Call, Rejection};
use crate::Reply;

/// A layer that runs `check` on every call before its method: `Ok(())`
/// lets the call through, a [`Rejection`] answers it with its status and
/// the method does not run.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::layers::{intercept, Rejection};
/// use mqrpc::ServerOptions;
/// let only_add = intercept(|call| match call.method() {
///     "add" => Ok(()),
///     other => Err(Rejection::permission_denied(format!("`{other}` is not for you"))),
/// });
/// let options = ServerOptions::default().layer(only_add);
/// # let _ = options;
/// ```
pub fn intercept<F>(check: F) -> InterceptLayer<F>
where
    F: Fn(&Call) -> Result<(), Rejection> + Clone + Send + Sync + 'static,
{
    InterceptLayer { check }
}

/// The layer [`intercept`] makes.
#[derive(Debug, Clone)]
pub struct InterceptLayer<F> {
    check: F,
}

impl<S, F: Clone> Layer<S> for InterceptLayer<F> {
    type Service = Intercept<S, F>;

    fn layer(&self, inner: S) -> Intercept<S, F> {
        Intercept {
            inner,
            check: self.check.clone(),
        }
    }
}

/// The service of an [`InterceptLayer`].
#[derive(Debug, Clone)]
pub struct Intercept<S, F> {
    inner: S,
    check: F,
}

impl<S, F> tower::Service<Call> for Intercept<S, F>
where
    S: tower::Service<Call, Response = Reply>,
    S::Error: Into<BoxError>,
    F: Fn(&Call) -> Result<(), Rejection>,
{
    type Response = Reply;
    type Error = S::Error;
    type Future = Either<S::Future, std::future::Ready<Result<Reply, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        match (self.check)(&call) {
            Ok(()) => Either::Left(self.inner.call(call)),
            Err(rejection) => Either::Right(std::future::ready(Ok(rejection.into_reply()))),
        }
    }
}
