//! The LMTP codec (RFC 2033), sans-IO like `proto`: command lines into [`Command`]s
//! ([`Decoder`], capped at RFC 5321's 512 octets), the message after DATA unstuffed
//! ([`data::Unstuffer`], bounded by the size limit), replies with enhanced status codes
//! ([`Reply`], RFC 2034 and 3463), and the session's state machine ([`Session`]), which says
//! what the caller must do next ([`Next`]). [`address`] judges envelope addresses and writes the
//! header lines a final delivery adds, for the LMTP listener and `popadm deliver` alike.
//!
//! It knows no socket, no clock, no async runtime and no store: the listener in `server` does
//! the I/O, looks accounts up and stores the copies.

pub mod address;
pub mod command;
pub mod data;
pub mod reply;
pub mod session;

pub use address::{clean_sender, is_address, lda_headers, BadSender};
pub use command::{parse, Body, Command, CommandError, Decoder, MAX_COMMAND_LINE};
pub use data::{DataStatus, Unstuffer};
pub use reply::Reply;
pub use session::{Envelope, Limits, Next, Recipient, Session, MAX_BAD_COMMANDS, MAX_RECIPIENTS};
