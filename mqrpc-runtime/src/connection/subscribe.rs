//! Subscribing: routes added with one SUBSCRIBE for their filters, the
//! broker's answer per filter, and unsubscribing.

use std::sync::atomic::Ordering;

use mqrpc_link::{Filter, ReasonCode};

use crate::protocol::QoS;
use crate::Error;

use super::acks::describe;
use super::shared::{Connection, Route, Sink};

impl Connection {
    /// Adds routes and subscribes their filters in one SUBSCRIBE: for each,
    /// its route id, or the broker's refusal (its route removed again).
    pub(crate) async fn subscribe_routes(
        &self,
        routes: Vec<(String, QoS, Sink)>,
    ) -> Result<Vec<Result<u64, crate::Error>>, crate::Error> {
        self.ensure_open()?;
        let mut ids = Vec::new();
        let mut filters = Vec::new();
        for (filter, qos, sink) in routes {
            let id = self.shared.next_route_id.fetch_add(1, Ordering::Relaxed);
            // Route first: a message may arrive right after the SUBACK.
            self.add_route(Route {
                id,
                filter: filter.clone(),
                matcher: crate::protocol::topic::Filter::new(&filter),
                qos,
                sink,
            });
            ids.push(id);
            filters.push((filter, qos));
        }
        let outcomes = match self.subscribe_each(filters).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                ids.iter().for_each(|id| drop(self.remove_route(*id)));
                return Err(e);
            }
        };
        let subscribed = ids.into_iter().zip(outcomes).map(|(id, outcome)| {
            outcome
                .map(|()| id)
                .inspect_err(|_| drop(self.remove_route(id)))
        });
        Ok(subscribed.collect())
    }

    /// Unsubscribes and removes a route.
    pub(crate) async fn unsubscribe(&self, route_id: u64) -> Result<(), Error> {
        let filter = self.remove_route(route_id);
        let Some(filter) = filter else { return Ok(()) };
        let still_needed = self
            .shared
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|r| r.filter == filter);
        if still_needed || !self.is_connected() {
            return Ok(());
        }
        let unsubscribed = self.shared.transport.unsubscribe(vec![filter.clone()]);
        match tokio::time::timeout(self.ack_timeout(), unsubscribed).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::Subscribe {
                filter,
                reason: e.to_string(),
            }),
            Err(_) => Err(Error::Subscribe {
                filter,
                reason: format!("no UNSUBACK within {:?}", self.ack_timeout()),
            }),
        }
    }

    pub(super) fn remove_route(&self, route_id: u64) -> Option<String> {
        let mut routes = self
            .shared
            .routes
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let index = routes.iter().position(|r| r.id == route_id)?;
        Some(routes.remove(index).filter)
    }

    /// One SUBSCRIBE for all `filters`; fails if the broker refuses any.
    pub(super) async fn subscribe_filters(&self, filters: Vec<(String, QoS)>) -> Result<(), Error> {
        self.subscribe_each(filters).await?.into_iter().collect()
    }

    /// One SUBSCRIBE for all `filters`: the broker's answer for each, or an
    /// error if there was no SUBACK.
    pub(super) async fn subscribe_each(
        &self,
        filters: Vec<(String, QoS)>,
    ) -> Result<Vec<Result<(), Error>>, Error> {
        let first = filters.first().map(|(f, _)| f.clone()).unwrap_or_default();
        let packet = filters
            .iter()
            .map(|(filter, qos)| Filter::new(filter.clone(), (*qos).into()))
            .collect();
        let acked = self.shared.transport.subscribe(packet, None);
        let reason = match tokio::time::timeout(self.ack_timeout(), acked).await {
            Ok(Ok(codes)) => {
                let outcome = |(code, (filter, _)): (&ReasonCode, &(String, QoS))| {
                    if code.is_success() {
                        return Ok(());
                    }
                    Err(Error::Subscribe {
                        filter: filter.clone(),
                        reason: format!("the broker answered {}", describe(*code)),
                    })
                };
                return Ok(codes.iter().zip(&filters).map(outcome).collect());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no SUBACK within {:?}", self.ack_timeout()),
        };
        Err(Error::Subscribe {
            filter: first,
            reason,
        })
    }
}
