//! A blocking POP3 client over `std::net`, for tests: every error is an `io::Error`, a reply
//! that is not the one a method requires included, with the command and the reply in its
//! message.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::IO_TIMEOUT;

/// Longest status line read (RFC 2449 section 4 allows 512 octets; this is generous).
const MAX_LINE: u64 = 64 * 1024;

/// A connection to a POP3 server, greeting read.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The greeting line.
    pub greeting: String,
}

impl Client {
    /// Connects (within [`IO_TIMEOUT`]) and reads the greeting.
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        Client::from_stream(TcpStream::connect_timeout(&addr, IO_TIMEOUT)?)
    }

    /// A client on a connection made elsewhere (e.g. one that sent a PROXY header first);
    /// reads the greeting.
    pub fn from_stream(stream: TcpStream) -> io::Result<Client> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let writer = stream.try_clone()?;
        let mut c = Client {
            reader: BufReader::new(stream),
            writer,
            greeting: String::new(),
        };
        c.greeting = c.line()?;
        Ok(c)
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Sends one command line (CRLF added).
    pub fn send(&mut self, line: &str) -> io::Result<()> {
        self.send_raw(format!("{line}\r\n").as_bytes())
    }

    /// One reply line without its CRLF. EOF, a line without CRLF and one longer than 64 KiB
    /// are errors.
    pub fn line(&mut self) -> io::Result<String> {
        let mut buf = Vec::new();
        (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed while a line was expected",
            ));
        }
        if !buf.ends_with(b"\r\n") {
            return Err(io::Error::other(format!(
                "line without CRLF: {:?}",
                String::from_utf8_lossy(&buf)
            )));
        }
        buf.truncate(buf.len() - 2);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Sends a command and returns its status line, whatever it is.
    pub fn cmd(&mut self, line: &str) -> io::Result<String> {
        self.send(line)?;
        self.line()
    }

    /// A command that must answer `+OK`.
    pub fn ok(&mut self, line: &str) -> io::Result<String> {
        self.expect(line, "+OK")
    }

    /// A command that must answer `-ERR`.
    pub fn err(&mut self, line: &str) -> io::Result<String> {
        self.expect(line, "-ERR ")
    }

    /// A command whose status line must start with `status`.
    fn expect(&mut self, line: &str, status: &str) -> io::Result<String> {
        let reply = self.cmd(line)?;
        if reply.starts_with(status) {
            Ok(reply)
        } else {
            Err(io::Error::other(format!("{line:?} answered {reply:?}")))
        }
    }

    /// The body of a multi-line reply whose status line was read, unstuffed (RFC 1939
    /// section 3): up to the line holding a lone `.`, each line that starts with `.` losing
    /// that first `.`. Lines end at LF, as the server's stuffing sees them.
    pub fn body(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut line = Vec::new();
        // Bounded by the reply: every pass consumes a line or fails.
        loop {
            line.clear();
            self.reader.read_until(b'\n', &mut line)?;
            if !line.ends_with(b"\n") {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a multi-line reply",
                ));
            }
            match line.strip_prefix(b".") {
                Some(b"\r\n" | b"\n") => return Ok(out),
                Some(rest) => out.extend_from_slice(rest),
                None => out.extend_from_slice(&line),
            }
        }
    }

    /// A multi-line command that must answer `+OK`: its body.
    pub fn multi(&mut self, line: &str) -> io::Result<Vec<u8>> {
        self.ok(line)?;
        self.body()
    }

    /// The non-empty body lines of a multi-line command that must answer `+OK` (CAPA, LIST,
    /// UIDL), without their CRLF.
    pub fn lines(&mut self, line: &str) -> io::Result<Vec<String>> {
        let body = self.multi(line)?;
        Ok(String::from_utf8_lossy(&body)
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// A listing (LIST, UIDL): `(message number, rest of the line)`.
    pub fn listing(&mut self, line: &str) -> io::Result<Vec<(u32, String)>> {
        self.lines(line)?
            .into_iter()
            .map(|l| {
                let (n, rest) = l.split_once(' ')?;
                Some((n.parse().ok()?, rest.to_owned()))
            })
            .map(|entry| entry.ok_or_else(|| io::Error::other(format!("bad {line} listing"))))
            .collect()
    }

    /// True once the server closed the connection (reads EOF, no data, within the timeout).
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok() && rest.is_empty()
    }

    /// The client's own address (what a proxy in between names in a PROXY header).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.writer.local_addr()
    }

    /// Closes both directions without QUIT.
    pub fn drop_connection(self) {
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server that greets, then answers each line it reads with the next of `replies`.
    fn serve(replies: Vec<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut writer = stream.try_clone().expect("clone");
            let mut reader = BufReader::new(stream);
            writer.write_all(b"+OK ready\r\n").expect("greet");
            for reply in replies {
                let mut cmd = String::new();
                if reader.read_line(&mut cmd).unwrap_or(0) == 0 {
                    return;
                }
                writer.write_all(reply).expect("reply");
            }
        });
        addr
    }

    #[test]
    fn bodies_are_unstuffed_up_to_the_terminating_dot() {
        let addr = serve(vec![
            b"+OK\r\n..dot\r\nplain\r\n...\r\n..\r\n\r\n.\r\n+OK after\r\n",
            b"+OK\r\n.\r\n",
            b"+OK\r\nbare lf\n..x\n.\n",
        ]);
        let mut c = Client::connect(addr).expect("connect");
        assert_eq!(c.greeting, "+OK ready");
        // Stuffed dots go, a `..` line is a `.` line, an empty line stays; what follows the
        // terminator is the next reply.
        assert_eq!(
            c.multi("RETR 1").expect("body"),
            b".dot\r\nplain\r\n..\r\n.\r\n\r\n"
        );
        assert_eq!(c.line().expect("next"), "+OK after");
        assert_eq!(c.multi("RETR 2").expect("empty"), b"");
        assert_eq!(c.multi("RETR 3").expect("lf"), b"bare lf\n.x\n");
    }

    #[test]
    fn listings_and_refusals() {
        let addr = serve(vec![
            b"+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n",
            b"-ERR no such message\r\n",
            b"+OK\r\nnot a listing\r\n.\r\n",
            b"+OK but cut\r\npartial",
        ]);
        let mut c = Client::connect(addr).expect("connect");
        assert_eq!(
            c.listing("LIST").expect("listing"),
            [(1, "120".to_owned()), (2, "200".to_owned())]
        );
        let err = c.ok("RETR 9").expect_err("-ERR is no +OK");
        assert!(err.to_string().contains("RETR 9"), "{err}");
        assert!(c.listing("UIDL").is_err());
        let err = c.multi("RETR 1").expect_err("cut");
        assert!(err.to_string().contains("closed"), "{err}");
        assert!(c.closed());
    }
}
