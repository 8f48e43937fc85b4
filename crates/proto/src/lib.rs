//! The POP3 codec, sans-IO.
//!
//! Bytes in, typed [`Command`]s out ([`Decoder`]); replies out as bytes ([`response`]) with
//! multi-line bodies dot-stuffed incrementally ([`DotStuffer`]) and read back by clients with
//! [`Unstuffer`]. It covers RFC 1939 and the commands of RFC 2449 (CAPA), 2595 (STLS),
//! 5034 (AUTH) and 6856 (UTF8, LANG). [`proxy`] reads the PROXY protocol header (v1 and v2)
//! a load balancer puts before the POP3 bytes on a backend listener.
//!
//! It deliberately knows nothing of sockets, async runtimes, clocks, storage or session state:
//! whether a command is allowed *now* is the server's business. Every buffer is bounded: command
//! lines are capped at [`MAX_COMMAND_LINE`] octets (RFC 2449 section 4) and reply first lines at
//! [`MAX_RESPONSE_LINE`] octets.

mod command;
mod decoder;
mod multiline;
pub mod proxy;
pub mod response;
mod secret;

pub use command::{Command, CommandError, Keyword};
pub use decoder::{Decoder, LineTooLong};
pub use multiline::{has_bare_lf, DotStuffer, Unstuffer};
pub use response::{ResponseCode, Status};
pub use secret::Secret;

/// Longest command line a server must accept, CRLF included (RFC 2449 section 4).
pub const MAX_COMMAND_LINE: usize = 255;
/// Longest first line of a reply, CRLF included (RFC 2449 section 4).
pub const MAX_RESPONSE_LINE: usize = 512;
