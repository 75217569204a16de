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
//! A response that streams for a long time (an event stream) is unaffected:
//! the clock stops when the response starts and restarts only when the
//! client sends again. Bytes a client pipelines behind a complete request are
//! timed from its first byte after the response began, which is lenient but
//! still bounded. An interim `100 Continue` counts as a response begun, so a
//! body sent after it is timed as a head (the shorter limit).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::rt::net::TcpStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

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
}

impl DeadlineStream {
    pub fn new(io: TcpStream, head_limit: Duration, body_limit: Duration) -> DeadlineStream {
        DeadlineStream {
            io,
            head_limit,
            body_limit,
            phase: Phase::Idle,
            timer: Box::pin(tokio::time::sleep(head_limit)),
        }
    }

    fn received(&mut self, bytes: &[u8]) {
        const BLANK_LINE: u32 = u32::from_be_bytes(*b"\r\n\r\n");
        let mut tail = match self.phase {
            Phase::Body => return,
            Phase::Head { tail } => tail,
            Phase::Idle => {
                self.timer.as_mut().reset(Instant::now() + self.head_limit);
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
        }
    }
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
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.answered(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.answered(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
