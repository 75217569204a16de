//! A private redis-server for one test, on a free port, with its own data
//! directory, or a private Redis Cluster of several such servers. Never the
//! machine's shared Redis: the tests kill, restart and inspect these.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anamnesis::config::Settings;

use super::binary::free_port;

/// What the cache tests need of a Redis, whether one server or a cluster.
pub trait TestRedis {
    /// Points a service's settings at it.
    fn configure(&self, settings: &mut Settings);
    /// Runs one command (on the node that holds its key); its raw output.
    fn run(&self, args: &[&str]) -> String;
    /// The keys matching `pattern`, one a line, from every node.
    fn keys(&self, pattern: &str) -> String;
    /// Takes (a node of) it away with SIGKILL.
    fn lose(&mut self);
    /// Brings back what `lose` took, and waits until it serves.
    fn bring_back(&mut self);
    /// Saves a snapshot of every node (loaded when one restarts).
    fn snapshot(&self);
    /// Restarts the node that holds `key` at once (SIGKILL, then from its
    /// snapshot), and waits until it serves.
    fn restart_holding(&mut self, key: &str);
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// A cluster node: its cluster bus port.
    cluster_port: Option<u16>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::launched(None)
    }

    fn launched(cluster_port: Option<u16>) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            cluster_port,
        };
        server.launch();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        if let Some(bus) = self.cluster_port {
            command
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "1000"])
                // Replicas sync at once (the default waits 5 s for more).
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--cluster-port", &bus.to_string()]);
        }
        let child = command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            // Nothing saved unless a test asks (SAVE), and then loaded on restart.
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (tests/run.sh installs it when missing)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs one command with redis-cli; its raw output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (loading a snapshot if one was saved).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

/// The tests share two cores with the servers they start: an answer in
/// the default 25 ms is not guaranteed there, and a late one degrades
/// Redis, which is not what most of them test. Killed or restarted
/// servers still fail at once (the connection is refused or dropped).
const TEST_TIMEOUT_MS: u64 = 250;

impl TestRedis for RedisServer {
    fn configure(&self, settings: &mut Settings) {
        settings.redis.url = Some(self.url());
        settings.redis.timeout_ms = TEST_TIMEOUT_MS;
    }

    fn run(&self, args: &[&str]) -> String {
        self.cli(args)
    }

    fn keys(&self, pattern: &str) -> String {
        self.cli(&["KEYS", pattern])
    }

    fn lose(&mut self) {
        self.kill();
    }

    fn bring_back(&mut self) {
        self.restart();
    }

    fn snapshot(&self) {
        assert_eq!(self.cli(&["SAVE"]).trim(), "OK");
    }

    fn restart_holding(&mut self, _key: &str) {
        self.restart();
    }
}

/// A Redis Cluster of three primaries on loopback, each owning a third of
/// the hash slots, as `redis-cli --cluster create` lays them out.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    /// The node `lose` took away.
    lost: Option<usize>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::with_replicas(0)
    }

    /// Three primaries, each with `replicas` replicas.
    pub fn with_replicas(replicas: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| RedisServer::launched(Some(free_port())))
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "the cluster was not created: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes, lost: None };
        cluster.wait_until_ok();
        cluster
    }

    /// The seeds a service is given: every node.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    fn serving(&self) -> impl Iterator<Item = &RedisServer> {
        let lost = self.lost;
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(i, _)| Some(*i) != lost)
            .map(|(_, n)| n)
    }

    /// The primary that holds `key`: asked directly (no redirects), only
    /// it answers without MOVED (a replica redirects too).
    pub fn holder_of(&self, key: &str) -> usize {
        self.nodes
            .iter()
            .enumerate()
            .position(|(i, n)| Some(i) != self.lost && !n.cli(&["GET", key]).contains("MOVED"))
            .expect("a node holds the key")
    }

    /// Kills the primary holding `key` for good: its replica takes over
    /// once the others agree it failed. Waits until the cluster is whole.
    pub fn fail_over(&mut self, key: &str) {
        let holder = self.holder_of(key);
        self.nodes[holder].kill();
        self.lost = Some(holder);
        // Until a live node serves the key's slot: the others notice the
        // loss after the node timeout, then the replica is elected.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.serving().any(|n| {
            let answer = n.cli(&["GET", key]);
            !answer.contains("MOVED") && !answer.contains("CLUSTERDOWN")
        }) {
            assert!(Instant::now() < deadline, "no replica took the slot over");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_until_ok();
    }

    /// Until every serving node reports the whole cluster ok, and every
    /// replica has its primary's data (a replica that never synced cannot
    /// take over).
    fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = |n: &RedisServer| {
            let replication = n.cli(&["INFO", "replication"]);
            n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
                && (replication.contains("role:master")
                    || replication.contains("master_link_status:up"))
        };
        while !self.serving().all(ready) {
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl TestRedis for RedisCluster {
    fn configure(&self, settings: &mut Settings) {
        settings.redis.cluster_nodes = self.seeds();
        settings.redis.timeout_ms = TEST_TIMEOUT_MS;
    }

    fn run(&self, args: &[&str]) -> String {
        let node = self.serving().next().expect("a node serves");
        let out = Command::new("redis-cli")
            .args(["-c", "-h", "127.0.0.1", "-p", &node.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// From the primaries only: a replica holds copies.
    fn keys(&self, pattern: &str) -> String {
        self.serving()
            .filter(|n| n.cli(&["ROLE"]).starts_with("master"))
            .map(|n| n.cli(&["KEYS", pattern]))
            .collect()
    }

    /// Kills the second node: a third of the slots, and the cluster with
    /// them once the others notice.
    fn lose(&mut self) {
        self.nodes[1].kill();
        self.lost = Some(1);
    }

    fn bring_back(&mut self) {
        if let Some(i) = self.lost.take() {
            // Its nodes.conf survives in its directory: it rejoins with its slots.
            self.nodes[i].restart();
        }
        self.wait_until_ok();
    }

    fn snapshot(&self) {
        for node in &self.nodes {
            assert_eq!(node.cli(&["SAVE"]).trim(), "OK");
        }
    }

    fn restart_holding(&mut self, key: &str) {
        let holder = self.holder_of(key);
        self.nodes[holder].restart();
        self.wait_until_ok();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
