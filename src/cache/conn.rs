//! Connecting to Redis: one server or a cluster, with the timeouts of
//! `redis.*`, on a thread of its own; and connecting a cluster afresh.

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::ConnectionManager;
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::runtime::Handle;

use super::RedisLink;
use crate::config::RedisSettings;

/// The connection commands go through: to one server, or to a cluster,
/// where each command goes to the node that holds its keys' slot.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A cluster's client and configuration: how to connect to it afresh.
pub(super) type Cluster = (ClusterClient, ClusterConfig);

/// Starts the thread every Redis call runs on (a runtime of its own) and
/// returns its handle.
pub(super) fn runtime() -> anyhow::Result<Handle> {
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("anamnesis-redis".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the Redis runtime starts");
            let _ = handle_tx.send(runtime.handle().clone());
            runtime.block_on(std::future::pending::<()>());
        })
        .context("starting the Redis thread")?;
    let handle = handle_rx.recv().context("the Redis thread did not start")?;
    Ok(handle)
}

/// Connects lazily to `redis.url`, or else to `redis.cluster_nodes`: the
/// connection commands go through, the clients the event subscription goes
/// to, and a cluster's client.
pub(super) fn connect(
    settings: &RedisSettings,
    handle: &Handle,
    timeout: Duration,
) -> anyhow::Result<(Conn, Vec<redis::Client>, Option<Cluster>)> {
    let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
    Ok(match &settings.url {
        Some(url) => {
            let client = redis::Client::open(url.as_str()).context("redis.url")?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(200));
            let _inside = handle.enter();
            let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
                .context("setting up the Redis connection")?;
            (Conn::Single(conn), vec![client], None)
        }
        None => {
            let seeds = &settings.cluster_nodes;
            anyhow::ensure!(
                !seeds.is_empty(),
                "neither redis.url nor redis.cluster_nodes is set"
            );
            let subscribe_to = seeds
                .iter()
                .map(|seed| redis::Client::open(seed.as_str()))
                .collect::<RedisResult<Vec<_>>>()
                .context("redis.cluster_nodes")?;
            // No retries: a reconnect or a redirect after a node restarted
            // or failed over must be seen (see the cache's module doc).
            let client = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                .retries(0)
                .build()
                .context("redis.cluster_nodes")?;
            let config = ClusterConfig::new()
                .set_connection_timeout(connect_timeout)
                .set_response_timeout(timeout);
            let _inside = handle.enter();
            let conn = client.get_pending_async_connection_with_config(config.clone());
            (Conn::Cluster(conn), subscribe_to, Some((client, config)))
        }
    })
}

impl RedisLink {
    pub(super) fn conn(&self) -> Conn {
        self.conn.lock().expect("the connection lock").clone()
    }

    /// A cluster connection that lost a node may keep waiting on it after
    /// it came back: while checks fail, start afresh every fifth (a second).
    pub(super) fn reconnect_now_and_then(&self, failed_checks: u32) {
        if let Some((client, config)) = &self.cluster {
            if failed_checks % 5 == 0 {
                let fresh = client.get_pending_async_connection_with_config(config.clone());
                *self.conn.lock().expect("the connection lock") = Conn::Cluster(fresh);
            }
        }
    }
}
