//! Backend listeners behind a load balancer: which peers may send a PROXY protocol header
//! ([`TrustedProxies`]), and reading that header off a fresh connection without taking a
//! byte of what follows it.
//!
//! The header names the real client, so it is believed only from configured proxies (haproxy's
//! `proxy-protocol.txt`, section 5: "accepting the header only from a number of known sources
//! should be safe"); a listener that expects it never guesses whether it is there (section 2).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use proto::proxy::{self, ProxyError, ProxyHeader, MAX_HEADER};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The peers allowed to connect to a proxied listener: networks in CIDR notation
/// (`10.0.0.0/8`, `fd00::/8`) or single addresses (`/32` or `/128`). An IPv4-mapped IPv6 peer
/// (`::ffff:10.1.2.3`, as a dual-stack socket reports IPv4 clients) matches IPv4 entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<Net>,
}

/// One network: an address with the host bits cleared, and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

/// An entry of `trusted_proxies` or `trusted_networks` that is not an address or a network
/// (the caller names the setting).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?}: {why} (want an address or a network such as 10.0.0.0/8 or fd00::/8)")]
pub struct TrustedProxyError {
    entry: String,
    why: &'static str,
}

impl TrustedProxies {
    /// Parses every entry; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, TrustedProxyError> {
        let nets = entries
            .iter()
            .map(|e| e.as_ref().parse::<Net>())
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { nets })
    }

    /// Loopback only: `127.0.0.0/8` and `::1`.
    pub fn loopback() -> TrustedProxies {
        TrustedProxies {
            nets: vec![
                Net {
                    addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
                    prefix: 8,
                },
                Net {
                    addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    prefix: 128,
                },
            ],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is inside one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(ip))
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}/{}", n.addr, n.prefix)?;
        }
        Ok(())
    }
}

impl Net {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask32(self.prefix) & ip.to_bits() == net.to_bits()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask128(self.prefix) & ip.to_bits() == net.to_bits()
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Net {
    type Err = TrustedProxyError;

    fn from_str(s: &str) -> Result<Net, TrustedProxyError> {
        let err = |why| TrustedProxyError {
            entry: s.to_string(),
            why,
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or(err("prefix length out of range"))?,
            Some(_) => return Err(err("prefix length is not a number")),
        };
        let net = match addr {
            IpAddr::V4(a) => IpAddr::V4((a.to_bits() & mask32(prefix)).into()),
            IpAddr::V6(a) => {
                let bits = a.to_bits() & mask128(prefix);
                match Ipv6Addr::from(bits).to_ipv4_mapped() {
                    // `::ffff:10.0.0.0/104` is `10.0.0.0/8`: peers are compared canonical.
                    Some(v4) if prefix >= 96 => {
                        return Ok(Net {
                            addr: IpAddr::V4(v4),
                            prefix: prefix - 96,
                        })
                    }
                    _ => IpAddr::V6(bits.into()),
                }
            }
        };
        if net != addr {
            return Err(err("host bits set after the prefix"));
        }
        Ok(Net { addr: net, prefix })
    }
}

/// Why no header could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("{0}")]
    Invalid(#[from] ProxyError),
    #[error("connection closed before a complete PROXY header")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one PROXY header from `stream`, taking exactly its octets off the socket: what the
/// kernel holds is peeked; an incomplete header's octets are all header, so they are taken
/// and the next peek waits for more; a complete one takes just `len` octets. What follows
/// (POP3 commands, a TLS ClientHello) stays in the socket for the session. The caller bounds
/// the time.
pub(crate) async fn read_header(stream: &mut TcpStream) -> Result<ProxyHeader, HeaderError> {
    let mut have: Vec<u8> = Vec::with_capacity(256);
    let mut peeked = vec![0u8; MAX_HEADER];
    // Each pass takes at least one octet or ends, and the parser decides by MAX_HEADER.
    for _ in 0..=MAX_HEADER {
        let room = MAX_HEADER - have.len();
        let n = stream.peek(&mut peeked[..room]).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let start = have.len();
        have.extend_from_slice(&peeked[..n]);
        match proxy::parse(&have)? {
            Some(header) => {
                let take = header.len - start;
                stream.read_exact(&mut peeked[..take]).await?;
                return Ok(header);
            }
            None => {
                stream.read_exact(&mut peeked[..n]).await?;
            }
        }
    }
    Err(HeaderError::Invalid(ProxyError::V2TooLong(MAX_HEADER + 1)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// An address written in the test (for this module's tests and `penalty`'s).
    pub(crate) fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn networks_and_addresses() {
        let t = TrustedProxies::parse(&[
            "10.0.0.0/8",
            "192.0.2.7",
            "::1",
            "2001:db8:1::/48",
            "::ffff:198.51.100.0/120",
            "0.0.0.0/0",
        ]);
        let t = t.expect("valid");
        assert_eq!(
            t.to_string(),
            "10.0.0.0/8 192.0.2.7/32 ::1/128 2001:db8:1::/48 198.51.100.0/24 0.0.0.0/0"
        );
        let only = |e: &str| TrustedProxies::parse(&[e]).expect(e);
        let ten = only("10.0.0.0/8");
        assert!(ten.contains(ip("10.255.1.2")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped peer");
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(
            !ten.contains(ip("::a00:1")),
            "IPv4-compatible is not mapped"
        );
        let host = only("192.0.2.7");
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let six = only("2001:db8:1::/48");
        assert!(six.contains(ip("2001:db8:1:ffff::1")));
        assert!(!six.contains(ip("2001:db8:2::1")));
        assert!(!six.contains(ip("10.0.0.1")));
        let lo = only("::1");
        assert!(lo.contains(ip("::1")) && !lo.contains(ip("127.0.0.1")));
        let mapped = only("::ffff:198.51.100.0/120");
        assert!(mapped.contains(ip("198.51.100.9")));
        assert!(mapped.contains(ip("::ffff:198.51.100.9")));
        assert!(only("0.0.0.0/0").contains(ip("203.0.113.1")));
        assert!(!only("0.0.0.0/0").contains(ip("::2")));
        assert!(only("::/0").contains(ip("2001:db8::9")));
        assert!(TrustedProxies::parse::<&str>(&[])
            .expect("empty")
            .is_empty());
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.1/8",
            "2001:db8::1/32",
            "example.org",
            "10.0.0.0/8/8",
            "10.0.0.0 /8",
        ] {
            let e = TrustedProxies::parse(&[bad]).expect_err(bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    /// A connected pair over loopback: (client side, server side).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    /// Section 2.1/2.2: the header may arrive in pieces; the bytes after it are left for the
    /// session, even when they come in the same segment.
    #[tokio::test]
    async fn header_in_pieces_leaves_what_follows() {
        let (mut client, mut server) = pair().await;
        let line = b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 110\r\nCAPA\r\n";
        let reader = tokio::spawn(async move {
            let h = read_header(&mut server).await.expect("header");
            let mut rest = [0u8; 6];
            server.read_exact(&mut rest).await.expect("rest");
            (h, rest)
        });
        for piece in [&line[..3], &line[3..20], &line[20..41], &line[41..]] {
            client.write_all(piece).await.expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (h, rest) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("in time")
            .expect("task");
        assert_eq!(h.source, Some("192.0.2.1:40000".parse().expect("addr")));
        assert_eq!(h.len, 42);
        assert_eq!(&rest, b"CAPA\r\n");
    }

    #[tokio::test]
    async fn garbage_and_early_close_are_refused() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"USER alice\r\n").await.expect("write");
        let e = read_header(&mut server).await.expect_err("garbage");
        assert!(
            matches!(e, HeaderError::Invalid(ProxyError::NotProxy(b'U', 0))),
            "{e}"
        );

        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 1.2").await.expect("write");
        drop(client);
        let e = read_header(&mut server).await.expect_err("closed");
        assert!(matches!(e, HeaderError::Closed), "{e}");
    }
}
