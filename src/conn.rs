//! Deadlines on every request a connection carries, not only its first.
//!
//! actix-http times the head of a connection's first request
//! (`client_request_timeout`) and idle keep-alive gaps, but once a request has
//! been answered, a client that sends part of the next request head and then
//! stalls holds the connection forever: the partial bytes stop the keep-alive
//! timer and the head timer is not armed again. [`DeadlineStream`] closes
//! that gap under the HTTP layer. From the first byte a client sends after a
//! response began, the head (up to its blank line) must arrive within the
//! head limit; from the end of the head, the response must begin within the
//! body limit (the body arriving and the handler answering). Otherwise the
//! connection is closed.
//!
//! Once a request reached the service, the service answers it in its own
//! time: the request context marks the connection as [`Held`], and the
//! body limit stops applying until the response starts. A write waiting for
//! the committer is withdrawn (503) or answered with its result, never cut
//! off with no answer after it was applied. The body limit here is then
//! only the backstop for bodies nobody reads.
//!
//! Responses the HTTP layer writes by itself, without the service (a head
//! too large, a request line that does not parse, a head that stalls), go
//! out with an empty body and no request id. This layer recognises them
//! (a 4xx or 5xx with `content-length: 0` and no `x-request-id`) and
//! writes in their place the service's error envelope with a minted
//! request id, and logs and counts them. After such a refusal the connection
//! lingers before it closes: what the client is still sending (the rest of
//! a head too large) is read and dropped for a moment, so that closing with
//! unread bytes does not reset the connection and destroy the answer before
//! the client read it.
//!
//! A response that streams for a long time (an event stream) is unaffected:
//! the clock stops when the response starts and restarts only when the
//! client sends again. Bytes a client pipelines behind a complete request are
//! timed from its first byte after the response began, which is lenient but
//! still bounded. An interim `100 Continue` is not a response begun: the
//! body sent after it is timed as a body.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::rt::net::TcpStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::error::HttpRefusal;

/// Where the connection is in the request it is receiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between a response and the client's next byte: not timed here (the
    /// keep-alive timer of the dispatcher applies).
    Idle,
    /// Receiving a head; `tail` holds its last bytes, to find the blank line
    /// that ends it across reads.
    Head { tail: u32 },
    /// Head complete: the body arriving and the handler answering.
    Body,
}

pub struct DeadlineStream {
    io: TcpStream,
    head_limit: Duration,
    body_limit: Duration,
    phase: Phase,
    timer: Pin<Box<Sleep>>,
    held: Held,
    /// Whether nothing was written since the current request began: the
    /// next write starts its response.
    response_start: bool,
    /// A response written in place of the HTTP layer's, and how much of it
    /// went out.
    replacement: Vec<u8>,
    replaced: usize,
    linger: Linger,
}

/// The close after a refusal the HTTP layer made by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Linger {
    /// No refusal: close at once.
    No,
    /// A refusal went out: shut the sending side, then drain.
    Due,
    /// Draining what the client still sends, up to this many more bytes.
    Draining(usize),
    Done,
}

/// How long, and how much, a refused connection reads before it closes.
/// Within the dispatcher's own disconnect timeout (1 s).
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 1 << 20;

/// Set while the service has a request of this connection in hand: the
/// connection's body limit does not apply until the response starts.
#[derive(Clone, Default)]
pub struct Held(Arc<AtomicBool>);

impl Held {
    /// The service took the request and answers it in its own time.
    pub fn hold(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn release(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    fn is_held(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl DeadlineStream {
    pub fn new(io: TcpStream, head_limit: Duration, body_limit: Duration) -> DeadlineStream {
        DeadlineStream {
            io,
            head_limit,
            body_limit,
            phase: Phase::Idle,
            timer: Box::pin(tokio::time::sleep(head_limit)),
            held: Held::default(),
            response_start: true,
            replacement: Vec::new(),
            replaced: 0,
            linger: Linger::No,
        }
    }

    /// The handle the request context holds this connection's clock with.
    pub fn held(&self) -> Held {
        self.held.clone()
    }

    fn received(&mut self, bytes: &[u8]) {
        const BLANK_LINE: u32 = u32::from_be_bytes(*b"\r\n\r\n");
        let mut tail = match self.phase {
            Phase::Body => return,
            Phase::Head { tail } => tail,
            Phase::Idle => {
                self.timer.as_mut().reset(Instant::now() + self.head_limit);
                self.response_start = true;
                0
            }
        };
        for &b in bytes {
            tail = (tail << 8) | u32::from(b);
            if tail == BLANK_LINE {
                self.phase = Phase::Body;
                self.timer.as_mut().reset(Instant::now() + self.body_limit);
                return;
            }
        }
        self.phase = Phase::Head { tail };
    }

    fn answered(&mut self, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.phase = Phase::Idle;
            self.response_start = false;
            self.held.release();
        }
    }

    /// Sends what is left of a replacement response; `Ready(Ok)` once all
    /// of it went out.
    fn drain_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.replaced < self.replacement.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.replacement[self.replaced..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.replaced += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.replacement.clear();
        self.replaced = 0;
        Poll::Ready(Ok(()))
    }

    fn write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.drain_replacement(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        if self.response_start {
            if let Some((head_len, replacement)) = envelope_for(buf) {
                self.replacement = replacement;
                self.linger = Linger::Due;
                // Taken whole: it goes out from the replacement buffer.
                let result = Poll::Ready(Ok(head_len));
                self.answered(&result);
                if let Poll::Ready(Err(e)) = self.drain_replacement(cx) {
                    return Poll::Ready(Err(e));
                }
                return result;
            }
        }
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        // An interim `100 Continue` is not the answer: the body is still
        // timed as a body, and the request stays held once the service has it.
        if !(self.response_start && buf.starts_with(b"HTTP/1.1 100 ")) {
            self.answered(&result);
        }
        result
    }
}

/// The service's answer in place of an empty error response the HTTP layer
/// wrote by itself (see the module): how many bytes of `buf` it replaces,
/// and the bytes to send instead. `None` for any other write.
fn envelope_for(buf: &[u8]) -> Option<(usize, Vec<u8>)> {
    // Every answer but an error leaves at once (`HTTP/1.1 2xx`: byte 9).
    if !matches!(buf.get(9), Some(b'4' | b'5')) {
        return None;
    }
    let head_len = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_len]).ok()?;
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let status_line = lines.next()?;
    let rest = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?;
    let status: u16 = rest.get(..3)?.parse().ok()?;
    if status < 400 {
        return None;
    }
    let mut kept = Vec::new();
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "x-request-id" => return None,
            "content-length" => empty = value.trim() == "0",
            "content-type" => return None,
            _ => kept.push(line),
        }
    }
    if !empty {
        return None;
    }
    let request_id = ulid::Ulid::new().to_string();
    let refusal = HttpRefusal::for_status(status);
    let code = refusal.entry().code;
    let body =
        serde_json::to_string(&refusal.body(request_id.clone())).expect("an error body serialises");
    tracing::warn!(status, %request_id, code, %refusal, "request refused before it reached the service");
    metrics::counter!("anamnesis_http_requests_total", "method" => "OTHER", "route" => "unparsed", "status" => status.to_string()).increment(1);
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\n",
        body.len()
    );
    for line in kept {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some((head_len, out.into_bytes()))
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.received(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            // A request the service holds is answered in the service's time.
            Poll::Pending if this.phase == Phase::Body && this.held.is_held() => Poll::Pending,
            Poll::Pending if this.phase != Phase::Idle => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request did not arrive in time",
                ))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.response_start || !this.replacement.is_empty() {
            // Looked at one buffer at a time; a shorter write is allowed.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return this.write(cx, first);
        }
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.answered(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.drain_replacement(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.drain_replacement(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        if matches!(this.linger, Linger::No | Linger::Due) {
            match Pin::new(&mut this.io).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            if this.linger == Linger::No {
                return Poll::Ready(Ok(()));
            }
            this.linger = Linger::Draining(LINGER_BYTES);
            this.timer.as_mut().reset(Instant::now() + LINGER);
        }
        this.drain_input(cx)
    }
}

impl DeadlineStream {
    /// Reads and drops what the client still sends after a refusal, until
    /// it closes, the byte budget is spent, or the linger time is up.
    fn drain_input(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 8192];
        while let Linger::Draining(left) = self.linger {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    let n = buf.filled().len();
                    self.linger = match left.checked_sub(n) {
                        Some(rest) if rest > 0 => Linger::Draining(rest),
                        _ => Linger::Done,
                    };
                }
                // The client closed, or the connection broke: nothing to wait for.
                Poll::Ready(_) => self.linger = Linger::Done,
                Poll::Pending => {
                    if self.timer.as_mut().poll(cx).is_ready() {
                        self.linger = Linger::Done;
                    } else {
                        return Poll::Pending;
                    }
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}
