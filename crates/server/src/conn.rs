//! A client connection that starts in cleartext and may switch to TLS (STLS), or starts in TLS,
//! over any byte stream: TCP in the server, `tokio::io::duplex` in the session's unit tests.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use proto::Decoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use zeroize::Zeroize;

/// Size of one read.
const READ_BUF: usize = 8 * 1024;

/// A byte stream a session can run over.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Waits for what the peer sends next and feeds it to `decoder`; 0 at end of stream. The
    /// default reads into a buffer it allocates for the read.
    fn receive(&mut self, decoder: &mut Decoder) -> impl Future<Output = io::Result<usize>> + Send {
        read_into(self, decoder)
    }
}

/// A TCP socket waits for readiness first and then reads into a buffer on the stack, so a
/// session waiting for its next command holds no read buffer at all.
impl Stream for TcpStream {
    async fn receive(&mut self, decoder: &mut Decoder) -> io::Result<usize> {
        loop {
            self.readable().await?;
            let mut buf = [0u8; READ_BUF];
            match self.try_read(&mut buf) {
                Ok(n) => {
                    decoder.feed(&buf[..n]);
                    // A PASS line must not stay on the stack either.
                    buf[..n].zeroize();
                    return Ok(n);
                }
                // The readiness was spurious.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The session's unit tests run over an in-memory pipe.
#[cfg(test)]
impl Stream for tokio::io::DuplexStream {}

/// One read of `stream` into `decoder`.
async fn read_into<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    decoder: &mut Decoder,
) -> io::Result<usize> {
    let mut buf = vec![0u8; READ_BUF];
    let n = stream.read(&mut buf).await?;
    decoder.feed(&buf[..n]);
    buf[..n].zeroize();
    Ok(n)
}

pub enum Conn<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// Between taking the plain stream for a handshake and getting the TLS one back; also
    /// what is left after a failed handshake. Reads see EOF, writes fail.
    Gone,
}

impl<S: Stream> Conn<S> {
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// The TLS connection's channel binding (SCRAM-SHA-256-PLUS); `None` in cleartext.
    pub fn channel_binding(&self, tls: Option<&crate::tls::Tls>) -> Option<auth::ChannelBinding> {
        match self {
            Conn::Tls(stream) => tls?.channel_binding(stream.get_ref().1),
            Conn::Plain(_) | Conn::Gone => None,
        }
    }

    /// Reads what the client sent next into `decoder`; 0 at end of stream. A TLS stream keeps
    /// its own buffers anyway, so it reads the plain way.
    pub async fn receive(&mut self, decoder: &mut Decoder) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.receive(decoder).await,
            Conn::Tls(s) => read_into(s.as_mut(), decoder).await,
            Conn::Gone => Ok(0),
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Gone => Poll::Ready(Err(gone())),
        }
    }

    /// A RETR writes a chunk and the dots stuffing adds as one vectored write (`writev` on
    /// TCP), not a copy.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Conn::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
            Conn::Gone => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Gone => Poll::Ready(Ok(())),
        }
    }
}
