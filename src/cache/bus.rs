//! The event bus between instances: each group of writes is published on
//! `<prefix>events` once its entries are marked, and each instance hands
//! the others' events to its local streams.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::RedisResult;
use serde::{Deserialize, Serialize};

use super::RedisLink;
use crate::domain::LiveEvent;

/// The events of one group of writes, as sent to the other instances.
#[derive(Serialize, Deserialize)]
struct BusMessage {
    origin: String,
    events: Vec<LiveEvent>,
}

/// A `BusMessage` as it is sent: the group's events, borrowed.
#[derive(Serialize)]
pub(super) struct BusMessageRef<'a> {
    pub(super) origin: &'a str,
    pub(super) events: &'a [&'a LiveEvent],
}

impl RedisLink {
    /// Receives the other instances' events and hands them to local streams.
    /// A lost subscription means Redis went away: degrade, and resubscribe.
    pub(super) async fn listen(self: Arc<Self>) {
        for turn in 0.. {
            let client = &self.subscribe_to[turn % self.subscribe_to.len()];
            let subscribed = tokio::time::timeout(self.timeout * 4, async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(self.channel()).await?;
                RedisResult::Ok(pubsub)
            })
            .await;
            let Ok(Ok(pubsub)) = subscribed else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Ok(bus) = serde_json::from_slice::<BusMessage>(message.get_payload_bytes())
                else {
                    continue;
                };
                if bus.origin != self.instance && self.hub.takes_remote() {
                    let events: Vec<Arc<LiveEvent>> =
                        bus.events.into_iter().map(Arc::new).collect();
                    self.hub.publish(&events);
                }
            }
            self.degrade("the event subscription was lost", true);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
