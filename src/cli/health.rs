//! `anamnesis healthcheck`: exit 0 when the service answers `GET /healthz`
//! with 200, for a container's health check.
//!
//! Hand-written on purpose: the runtime image (`debian:bookworm-slim`, see
//! the Dockerfile) has no curl or wget to call, and the check is one fixed
//! request to the service in the same container.
//! The HTTP client in the lock file (reqwest) is a test dependency; making
//! it a runtime one would put hyper, its connection pool and a runtime into
//! the release binary for a dozen lines of `TcpStream`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Context;

/// How long the service may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Probes `addr` (`server.listen` unless given; `0.0.0.0` is probed on the
/// loopback).
pub fn check(addr: &str) -> anyhow::Result<()> {
    let addr = addr.replace("0.0.0.0", "127.0.0.1");
    let mut stream = TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(ANSWER_WITHIN))?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if response.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        anyhow::bail!(
            "unhealthy: {}",
            response.lines().next().unwrap_or("no answer")
        )
    }
}
