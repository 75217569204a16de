//! Requests the HTTP layer refuses by itself, before the service sees them
//! (a head that does not parse, is too large or stalls). `conn` writes the
//! service's envelope in place of the layer's empty answer; the code and
//! message come from the table like every other error's.

use super::codes::{self, ErrorCode};
use super::{ErrorBody, ErrorDetail};

/// Why the HTTP layer refused a request, as told by the status it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpRefusal {
    #[error("the request line or headers are not valid HTTP/1.1, or the request line is too long")]
    Malformed,
    #[error(
        "the request line and headers did not arrive in time (server.request_head_timeout_ms)"
    )]
    HeadTimeout,
    #[error("the request is larger than the server accepts")]
    TooLarge,
    #[error(
        "the request line and headers are larger than the server accepts (about 32 KB in all)"
    )]
    HeadersTooLarge,
    /// Another 4xx the layer wrote.
    #[error("the request could not be read as HTTP/1.1")]
    Unreadable,
    /// A 5xx the layer wrote: its own failure, not the client's.
    #[error("the HTTP layer answered {0} by itself")]
    Failed(u16),
}

impl HttpRefusal {
    /// The refusal an empty error answer with this status stands for.
    pub fn for_status(status: u16) -> HttpRefusal {
        match status {
            400 => HttpRefusal::Malformed,
            408 => HttpRefusal::HeadTimeout,
            413 => HttpRefusal::TooLarge,
            431 => HttpRefusal::HeadersTooLarge,
            s if s < 500 => HttpRefusal::Unreadable,
            s => HttpRefusal::Failed(s),
        }
    }

    /// Its entry in the table. The status stays the one the layer wrote.
    pub fn entry(self) -> &'static ErrorCode {
        match self {
            HttpRefusal::Malformed | HttpRefusal::Unreadable => &codes::MALFORMED_REQUEST,
            HttpRefusal::HeadTimeout => &codes::REQUEST_TIMEOUT,
            HttpRefusal::TooLarge => &codes::PAYLOAD_TOO_LARGE,
            HttpRefusal::HeadersTooLarge => &codes::HEADERS_TOO_LARGE,
            HttpRefusal::Failed(_) => &codes::INTERNAL_ERROR,
        }
    }

    /// The envelope, under a request id minted for it.
    pub fn body(self, request_id: String) -> ErrorBody {
        let entry = self.entry();
        ErrorBody {
            error: ErrorDetail {
                code: entry.code.to_owned(),
                message: entry.public_message(&self, false),
                request_id,
            },
        }
    }
}
