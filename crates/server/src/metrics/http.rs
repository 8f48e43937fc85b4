//! The `/metrics` endpoint: just enough HTTP/1.1 for a Prometheus scrape, and nothing of a
//! general web server. One request per connection (`Connection: close`); `GET` or `HEAD`
//! `/metrics` gets the text format, any other path 404, any other method 405, a malformed
//! request 400, a request head over [`MAX_REQUEST`] octets 431. The request head must arrive
//! within [`READ_TIMEOUT`] and the reply be taken within [`WRITE_TIMEOUT`]; at most
//! [`MAX_CONNECTIONS`] are served at once, more are closed at accept.
//!
//! Its address is loopback unless the operator says otherwise (pop3d's
//! `metrics_allow_remote`): the counters tell who is active and when.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::Metrics;

/// Longest request head (request line and headers) read; a scrape sends a few hundred octets.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the reply.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes served at once; more connections are closed at accept.
pub const MAX_CONNECTIONS: usize = 8;

/// The content type of Prometheus' text format, version 0.0.4.
const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (with `head`: `HEAD /metrics`, the headers only).
    Metrics {
        head: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Serves the endpoint on `listener` until the task is aborted.
pub(crate) async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics: too many scrapes at once; closed");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            serve(stream, &metrics).await;
            drop(permit);
        });
    }
}

/// One request, one reply, close.
async fn serve(mut stream: TcpStream, metrics: &Metrics) {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(Oversized)) => {
            respond(&mut stream, reply(431, "", "")).await;
            return;
        }
        // Timed out, or the client went away: nothing to answer.
        Err(_) => return,
    };
    let Some(head) = head else {
        return;
    };
    let response = match route(&head) {
        Route::Metrics { head } => {
            let body = metrics.encode();
            // Content-Length is the body's even for HEAD (RFC 9110 section 9.3.2).
            let mut r = header(200, CONTENT_TYPE, body.len());
            if !head {
                r.push_str(&body);
            }
            r
        }
        Route::NotFound => reply(404, "text/plain", "not found; try /metrics\n"),
        Route::MethodNotAllowed => reply(405, "text/plain", "only GET and HEAD\n"),
        Route::BadRequest => reply(400, "text/plain", "bad request\n"),
    };
    respond(&mut stream, response).await;
}

/// Writes `response` (bounded by [`WRITE_TIMEOUT`]) and closes.
async fn respond(stream: &mut TcpStream, response: String) {
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    if let Ok(Err(e)) = tokio::time::timeout(WRITE_TIMEOUT, write).await {
        debug!(error = %e, "metrics: writing the reply failed");
    }
}

/// The request head was longer than [`MAX_REQUEST`].
struct Oversized;

/// Reads up to the blank line that ends the request head; `None` when the client closes
/// first.
async fn read_head(stream: &mut TcpStream) -> Result<Option<Vec<u8>>, Oversized> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_REQUEST {
            return Err(Oversized);
        }
    }
}

/// Where the head ends: after the first empty line (CRLF CRLF, or bare LFs, RFC 9112 section
/// 2.2 lets a server accept those).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Judges the request line (RFC 9112 section 3: `method SP request-target SP HTTP-version`).
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head: false },
        "HEAD" => Route::Metrics { head: true },
        _ => Route::MethodNotAllowed,
    }
}

/// A whole reply with `body`: status line, headers, body.
fn reply(status: u16, content_type: &str, body: &str) -> String {
    let mut r = header(status, content_type, body.len());
    r.push_str(body);
    r
}

/// The status line and headers of a reply whose body is `length` octets.
fn header(status: u16, content_type: &str, length: usize) -> String {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let mut r = format!("HTTP/1.1 {status} {reason}\r\n");
    if !content_type.is_empty() {
        r.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if status == 405 {
        r.push_str("Allow: GET, HEAD\r\n");
    }
    r.push_str(&format!(
        "Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_only_get_and_head_of_metrics() {
        let cases: &[(&[u8], Route)] = &[
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Route::Metrics { head: false },
            ),
            (
                b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n",
                Route::Metrics { head: false },
            ),
            (
                b"HEAD /metrics HTTP/1.1\r\n\r\n",
                Route::Metrics { head: true },
            ),
            (b"GET /metrics HTTP/1.1\n\n", Route::Metrics { head: false }),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"GET / HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metrics/x HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metrics\r\n\r\n", Route::BadRequest),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET http://h/metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET /metrics SPDY/3\r\n\r\n", Route::BadRequest),
            (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
        ];
        for (head, want) in cases {
            assert_eq!(route(head), *want, "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn the_head_ends_at_the_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn replies_say_their_length_and_close() {
        let r = reply(404, "text/plain", "nope\n");
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        assert!(
            r.contains("Content-Length: 5\r\nConnection: close\r\n\r\nnope\n"),
            "{r}"
        );
        let r = reply(405, "text/plain", "");
        assert!(r.contains("Allow: GET, HEAD\r\n"), "{r}");
        assert!(reply(431, "", "").starts_with("HTTP/1.1 431 Request Header Fields Too Large"));
    }

    /// Over loopback: a scrape gets the text format; an endless request head is cut at
    /// MAX_REQUEST and answered 431; a silent client is closed after READ_TIMEOUT.
    #[tokio::test]
    async fn serves_a_scrape_and_refuses_an_oversized_head() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::new());
        let server = tokio::spawn(accept_loop(listener, metrics));
        let exchange = |request: Vec<u8>| async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            // The server may answer and close before taking all of an oversized head.
            let _ = s.write_all(&request).await;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        let ok = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{ok}"
        );
        assert!(ok.contains("pop3d_build_info{version=\""), "{ok}");
        let (headers, body) = ok.split_once("\r\n\r\n").expect("head and body");
        assert!(
            headers.contains(&format!("Content-Length: {}", body.len())),
            "{headers}"
        );
        let head = exchange(b"HEAD /metrics HTTP/1.1\r\n\r\n".to_vec()).await;
        assert!(head.ends_with("\r\n\r\n"), "no body to HEAD: {head}");
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST * 2, b'a');
        let refused = exchange(big).await;
        assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");
        server.abort();
    }
}
