//! The PROXY protocol header (haproxy's `proxy-protocol.txt`), sans-IO.
//!
//! A load balancer in front of a backend listener prepends one header to the connection that
//! names the real client: version 1 is a text line (section 2.1), version 2 a binary block
//! (section 2.2). [`parse`] reads either from the bytes received so far: `Ok(None)` asks for
//! more, `Ok(Some(header))` says how many bytes the header took, an error says the connection
//! must be dropped (section 2.1: "Any sequence which does not exactly match the protocol must
//! be discarded and cause the receiver to abort the connection").
//!
//! Garbage is refused as early as it shows: every byte is checked against the two signatures
//! as it arrives, a version 1 line must stay printable and end in CRLF within
//! [`MAX_V1_LINE`] octets, a version 2 length over [`MAX_HEADER`] is refused as soon as the
//! 16-byte fixed part is in. The decoder never looks past the header's end, so the caller can
//! keep every later byte for the application protocol.
//!
//! What it accepts, per the spec:
//! - v1 `TCP4`/`TCP6` lines with canonical addresses (no leading zeros in IPv4 octets or in
//!   ports) of the announced family; `UNKNOWN` with anything up to the CRLF (ignored).
//! - v2 version nibble 2 only; commands LOCAL (addresses ignored) and PROXY; families
//!   UNSPEC, INET, INET6, UNIX and transports UNSPEC, STREAM, DGRAM (any other value is
//!   refused). Only TCP over IPv4/IPv6 yields addresses; the other valid combinations fall
//!   back to "use the real connection's endpoints" (`source: None`), as section 2.2 allows
//!   a receiver that does not implement them. TLVs after the address block are skipped
//!   unread (section 2.2: "a receiver may choose to skip over and ignore those bytes").
//!
//! It does not decide whom to trust: a header is only meaningful from a configured proxy
//! (section 5), which is the server's business.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature (section 2.2).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The version 1 line starts with this (section 2.1).
const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest version 1 line, CRLF included (section 2.1: "If the CRLF sequence is not found
/// in the first 107 characters, the receiver should declare the line invalid").
pub const MAX_V1_LINE: usize = 107;
/// The fixed part of a version 2 header: signature, version/command, family, length.
pub const V2_FIXED: usize = 16;
/// Longest header accepted, of either version (a version 2 fixed part plus up to 1,008 octets
/// of addresses and TLVs). The spec allows a 16-bit length (64 KiB), but TCP over IPv6 needs
/// 36 octets and the TLVs proxies send (ALPN, authority, CRC32c, unique id of up to 128
/// octets, TLS details) stay well below this; the spec itself wants headers to fit the
/// smallest TCP segment (536 octets, section 2). A longer one is refused rather than held.
pub const MAX_HEADER: usize = 1024;

/// A complete PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client as the proxy saw it; `None` for v1 `UNKNOWN`, v2 `LOCAL` and the v2
    /// families this decoder falls back on (the connection's own endpoints apply then).
    pub source: Option<SocketAddr>,
    /// The address the client connected to on the proxy; `None` when `source` is.
    pub destination: Option<SocketAddr>,
    /// Octets the header took at the start of the buffer.
    pub len: usize,
    /// 1 or 2.
    pub version: u8,
}

/// Why a header was refused; the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header (byte {0:#04x} at offset {1})")]
    NotProxy(u8, usize),
    #[error("PROXY v1 line without CRLF in its first {MAX_V1_LINE} octets")]
    V1TooLong,
    #[error("PROXY v1 line with a byte {0:#04x} that is not printable US-ASCII")]
    V1Byte(u8),
    #[error("PROXY v1 line: {0}")]
    V1Syntax(&'static str),
    #[error("PROXY v2 version {0} (only 2 is defined)")]
    V2Version(u8),
    #[error("PROXY v2 command {0:#x} (only LOCAL and PROXY are defined)")]
    V2Command(u8),
    #[error("PROXY v2 family/protocol byte {0:#04x} is not defined")]
    V2Family(u8),
    #[error("PROXY v2 header of {0} octets (at most {MAX_HEADER} accepted)")]
    V2TooLong(usize),
    #[error("PROXY v2 address block of {len} octets is too short for family {family:#04x}")]
    V2ShortAddress { family: u8, len: usize },
}

/// Reads a PROXY header (v1 or v2) from the start of `buf`: `Ok(None)` while `buf` is a
/// proper prefix of a header that may still turn out valid.
pub fn parse(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(&b) => Err(ProxyError::NotProxy(b, 0)),
    }
}

/// Checks `buf` against the first octets of `signature`; `true` when all of it is in.
fn signature(buf: &[u8], signature: &[u8]) -> Result<bool, ProxyError> {
    for (i, (&got, &want)) in buf.iter().zip(signature).enumerate() {
        if got != want {
            return Err(ProxyError::NotProxy(got, i));
        }
    }
    Ok(buf.len() >= signature.len())
}

fn parse_v1(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    if !signature(buf, V1_PREFIX)? {
        return Ok(None);
    }
    let window = &buf[..buf.len().min(MAX_V1_LINE)];
    let mut end = None;
    for (i, &b) in window.iter().enumerate() {
        match b {
            b'\r' => match window.get(i + 1) {
                Some(b'\n') => {
                    end = Some(i);
                    break;
                }
                Some(_) => return Err(ProxyError::V1Syntax("CR without LF")),
                None => {}
            },
            b'\n' => return Err(ProxyError::V1Syntax("LF without CR")),
            0x20..=0x7e => {}
            other => return Err(ProxyError::V1Byte(other)),
        }
    }
    let Some(end) = end else {
        return if window.len() >= MAX_V1_LINE {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    // Checked printable ASCII above, so this cannot fail.
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end])
        .map_err(|_| ProxyError::V1Syntax("not ASCII"))?;
    let len = end + 2;
    let (proto, rest) = match line.split_once(' ') {
        Some((p, r)) => (p, Some(r)),
        None => (line, None),
    };
    let v4 = match proto {
        "UNKNOWN" => {
            // Section 2.1: the rest of an UNKNOWN line is ignored.
            return Ok(Some(ProxyHeader {
                source: None,
                destination: None,
                len,
                version: 1,
            }));
        }
        "TCP4" => true,
        "TCP6" => false,
        _ => {
            return Err(ProxyError::V1Syntax(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let rest = rest.ok_or(ProxyError::V1Syntax("no addresses"))?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(ProxyError::V1Syntax(
            "not exactly two addresses and two ports, one space apart",
        ));
    };
    let (src, dst) = (v1_address(src, v4)?, v1_address(dst, v4)?);
    let (sport, dport) = (v1_port(sport)?, v1_port(dport)?);
    Ok(Some(ProxyHeader {
        source: Some(SocketAddr::new(src, sport)),
        destination: Some(SocketAddr::new(dst, dport)),
        len,
        version: 1,
    }))
}

/// An address of the announced family. `Ipv4Addr`'s parser already refuses leading zeros
/// (octal look-alikes) and anything but four decimal octets, as section 2.1 asks.
fn v1_address(s: &str, v4: bool) -> Result<IpAddr, ProxyError> {
    if v4 {
        s.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| ProxyError::V1Syntax("bad IPv4 address"))
    } else {
        s.parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyError::V1Syntax("bad IPv6 address"))
    }
}

/// A decimal port in 0..=65535 without a sign or leading zeros (section 2.1).
fn v1_port(s: &str) -> Result<u16, ProxyError> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(ProxyError::V1Syntax("bad port"));
    }
    s.parse()
        .map_err(|_| ProxyError::V1Syntax("port over 65535"))
}

fn parse_v2(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    if !signature(buf, &V2_SIGNATURE)? {
        return Ok(None);
    }
    // Each byte of the fixed part is judged as soon as it is in.
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        other => return Err(ProxyError::V2Command(other)),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(None);
    };
    if family >> 4 > 3 || family & 0x0f > 2 {
        return Err(ProxyError::V2Family(family));
    }
    let [Some(&hi), Some(&lo)] = [buf.get(14), buf.get(15)] else {
        return Ok(None);
    };
    let block = usize::from(u16::from_be_bytes([hi, lo]));
    let len = V2_FIXED + block;
    if len > MAX_HEADER {
        return Err(ProxyError::V2TooLong(len));
    }
    let need = match family {
        0x11 => 12,
        0x21 => 36,
        _ => 0,
    };
    // Section 2.2: receivers MUST use the length to skip, and must not assume zero for
    // LOCAL; a PROXY command with TCP needs its whole address block.
    if !local && block < need {
        return Err(ProxyError::V2ShortAddress { family, len: block });
    }
    let Some(addr) = buf.get(V2_FIXED..len) else {
        return Ok(None);
    };
    let (source, destination) = match (local, family) {
        (false, 0x11) => {
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    addr[at],
                    addr[at + 1],
                    addr[at + 2],
                    addr[at + 3],
                ))
            };
            let port = |at: usize| u16::from_be_bytes([addr[at], addr[at + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(8))),
                Some(SocketAddr::new(ip(4), port(10))),
            )
        }
        (false, 0x21) => {
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&addr[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            let port = |at: usize| u16::from_be_bytes([addr[at], addr[at + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(32))),
                Some(SocketAddr::new(ip(16), port(34))),
            )
        }
        // LOCAL, UNSPEC, UNIX, DGRAM: the connection's own endpoints apply.
        _ => (None, None),
    };
    Ok(Some(ProxyHeader {
        source,
        destination,
        len,
        version: 2,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    /// Parses `input` whole and fed one more byte at a time; every proper prefix shorter than
    /// the outcome's point must ask for more, and the first decisive prefix must give the
    /// same result as the whole input.
    fn parse_all_ways(input: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
        let whole = parse(input);
        let mut decided = None;
        for n in 0..=input.len() {
            match parse(&input[..n]) {
                Ok(None) => assert!(
                    decided.is_none(),
                    "{input:?}: decided, then undecided at {n}"
                ),
                other => {
                    if decided.is_none() {
                        decided = Some(other.clone());
                        assert_eq!(other, whole, "{input:?}: prefix of {n} decides otherwise");
                    }
                    if let Ok(Some(h)) = &other {
                        assert!(h.len <= n, "header longer than its input");
                    }
                }
            }
        }
        whole
    }

    fn v2(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(ver_cmd);
        v.push(family);
        v.extend_from_slice(&u16::try_from(block.len()).expect("len").to_be_bytes());
        v.extend_from_slice(block);
        v
    }

    fn v2_tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, tlvs: &[u8]) -> Vec<u8> {
        let mut block = Vec::new();
        block.extend_from_slice(&src);
        block.extend_from_slice(&dst);
        block.extend_from_slice(&sport.to_be_bytes());
        block.extend_from_slice(&dport.to_be_bytes());
        block.extend_from_slice(tlvs);
        v2(0x21, 0x11, &block)
    }

    /// Section 2.1's example and the line lengths it lists.
    #[test]
    fn v1_spec_examples() {
        let input = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let h = parse_all_ways(input).expect("valid").expect("complete");
        assert_eq!(h.source, Some(sa("192.168.0.1:56324")));
        assert_eq!(h.destination, Some(sa("192.168.0.11:443")));
        assert_eq!(h.len, 47);
        assert_eq!(&input[h.len..], b"GET / HTTP/1.1\r\n");
        assert_eq!(h.version, 1);

        let max4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(max4.len(), 56);
        let h = parse_all_ways(max4).expect("valid").expect("complete");
        assert_eq!(h.source, Some(sa("255.255.255.255:65535")));

        let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let max6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
        assert_eq!(max6.len(), 104);
        let h = parse_all_ways(max6.as_bytes())
            .expect("valid")
            .expect("complete");
        assert_eq!(
            h.source,
            Some(SocketAddr::new(f.parse().expect("ip"), 65535))
        );
        assert_eq!(h.len, 104);

        let short = b"PROXY UNKNOWN\r\n";
        let h = parse_all_ways(short).expect("valid").expect("complete");
        assert_eq!((h.source, h.destination, h.len), (None, None, 15));

        // Worst case: 107 octets, the rest of an UNKNOWN line ignored.
        let worst = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
        assert_eq!(worst.len(), MAX_V1_LINE);
        let h = parse_all_ways(worst.as_bytes())
            .expect("valid")
            .expect("complete");
        assert_eq!((h.source, h.len), (None, MAX_V1_LINE));
    }

    #[test]
    fn v1_fields() {
        let ok: &[(&str, &str, &str)] = &[
            (
                "PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
                "0.0.0.0:0",
                "0.0.0.0:0",
            ),
            (
                "PROXY TCP4 10.1.2.3 10.0.0.1 1 110\r\n",
                "10.1.2.3:1",
                "10.0.0.1:110",
            ),
            ("PROXY TCP6 ::1 ::2 5 6\r\n", "[::1]:5", "[::2]:6"),
            (
                "PROXY TCP6 2001:DB8::A 2001:db8::b 1024 995\r\n",
                "[2001:db8::a]:1024",
                "[2001:db8::b]:995",
            ),
            (
                "PROXY TCP6 ::ffff:192.0.2.1 ::1 7 8\r\n",
                "[::ffff:192.0.2.1]:7",
                "[::1]:8",
            ),
        ];
        for (line, src, dst) in ok {
            let h = parse_all_ways(line.as_bytes()).expect(line).expect(line);
            assert_eq!(h.source, Some(sa(src)), "{line}");
            assert_eq!(h.destination, Some(sa(dst)), "{line}");
            assert_eq!(h.len, line.len(), "{line}");
        }
        // Anything before the CRLF of an UNKNOWN line is ignored (section 2.1).
        for line in [
            "PROXY UNKNOWN\r\n",
            "PROXY UNKNOWN 1.2.3.4 x y z\r\n",
            "PROXY UNKNOWN \r\n",
        ] {
            let h = parse_all_ways(line.as_bytes()).expect(line).expect(line);
            assert_eq!((h.source, h.len), (None, line.len()), "{line}");
        }
        let bad: &[&str] = &[
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\rx",
            "PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n",
            "PROXY  TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",
            "PROXY TCP4\r\n",
            "PROXY TCP4 \r\n",
            "PROXY TCP5 1.2.3.4 1.2.3.4 1 1\r\n",
            "PROXY tcp4 1.2.3.4 1.2.3.4 1 1\r\n",
            "PROXY UNKNOWNX\r\n",
            "PROXY \r\n",
            // Leading zeros (octal look-alikes) and wrong families.
            "PROXY TCP4 192.168.0.01 1.2.3.4 1 1\r\n",
            "PROXY TCP4 1.2.3.4 1.2.3.4 01 1\r\n",
            "PROXY TCP4 1.2.3.4 1.2.3.4 1 00\r\n",
            "PROXY TCP4 1.2.3 1.2.3.4 1 1\r\n",
            "PROXY TCP4 1.2.3.256 1.2.3.4 1 1\r\n",
            "PROXY TCP4 ::1 ::1 1 1\r\n",
            "PROXY TCP6 1.2.3.4 1.2.3.4 1 1\r\n",
            "PROXY TCP6 ::1 ::1:: 1 1\r\n",
            // Ports: range, signs, non-digits.
            "PROXY TCP4 1.2.3.4 1.2.3.4 65536 1\r\n",
            "PROXY TCP4 1.2.3.4 1.2.3.4 +1 1\r\n",
            "PROXY TCP4 1.2.3.4 1.2.3.4 -1 1\r\n",
            "PROXY TCP4 1.2.3.4 1.2.3.4 1 0x10\r\n",
            "PROXY TCP4 1.2.3.4 1.2.3.4 1 100000\r\n",
            // Not printable.
            "PROXY TCP4 1.2.3.4\t1.2.3.4 1 1\r\n",
            "PROXY UNKNOWN \u{e9}\r\n",
        ];
        for line in bad {
            assert!(
                parse_all_ways(line.as_bytes()).is_err(),
                "{line:?} accepted"
            );
        }
    }

    /// Section 2.1: no CRLF within 107 octets is invalid, found at the 107th octet.
    #[test]
    fn v1_length_cap() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(MAX_V1_LINE - 1, b'a');
        assert_eq!(parse(&line), Ok(None));
        line.push(b'\r');
        assert_eq!(parse(&line), Err(ProxyError::V1TooLong));
        line.truncate(MAX_V1_LINE - 2);
        line.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&line), Ok(Some(h)) if h.len == MAX_V1_LINE));
    }

    /// Section 2.2's wire layout, byte by byte, with TLVs skipped.
    #[test]
    fn v2_tcp() {
        let input = v2_tcp4([192, 0, 2, 1], [198, 51, 100, 7], 54321, 110, &[]);
        let h = parse_all_ways(&input).expect("valid").expect("complete");
        assert_eq!(h.source, Some(sa("192.0.2.1:54321")));
        assert_eq!(h.destination, Some(sa("198.51.100.7:110")));
        assert_eq!((h.len, h.version), (28, 2));

        // TLVs (a NOOP and an ALPN, section 2.2.4 and 2.2.1) are part of the header.
        let tlvs = [0x04, 0, 2, 0xaa, 0xbb, 0x01, 0, 4, b'p', b'o', b'p', b'3'];
        let mut input = v2_tcp4([10, 0, 0, 9], [10, 0, 0, 1], 1, 2, &tlvs);
        input.extend_from_slice(b"USER x\r\n");
        let h = parse_all_ways(&input).expect("valid").expect("complete");
        assert_eq!(h.source, Some(sa("10.0.0.9:1")));
        assert_eq!(&input[h.len..], b"USER x\r\n");

        let mut block = Vec::new();
        let src: Ipv6Addr = "2001:db8::1".parse().expect("ip");
        let dst: Ipv6Addr = "2001:db8::2".parse().expect("ip");
        block.extend_from_slice(&src.octets());
        block.extend_from_slice(&dst.octets());
        block.extend_from_slice(&65535u16.to_be_bytes());
        block.extend_from_slice(&995u16.to_be_bytes());
        let input = v2(0x21, 0x21, &block);
        let h = parse_all_ways(&input).expect("valid").expect("complete");
        assert_eq!(h.source, Some(sa("[2001:db8::1]:65535")));
        assert_eq!(h.destination, Some(sa("[2001:db8::2]:995")));
        assert_eq!(h.len, 52);
    }

    /// Section 2.2: LOCAL ignores the address block (but skips it by its length); UNSPEC,
    /// UNIX and DGRAM fall back to the real endpoints.
    #[test]
    fn v2_fallbacks() {
        let tcp = v2_tcp4([1, 2, 3, 4], [5, 6, 7, 8], 9, 10, &[]);
        for (ver_cmd, family, block) in [
            (0x20, 0x00, &[][..]),
            (0x20, 0x11, &tcp[16..]),
            (0x20, 0x11, &[][..]),
            (0x21, 0x00, &[][..]),
            (0x21, 0x12, &tcp[16..]),
            (0x21, 0x31, &[0u8; 216][..]),
            (0x21, 0x32, &[0u8; 216][..]),
        ] {
            let input = v2(ver_cmd, family, block);
            let h = parse_all_ways(&input).expect("valid").expect("complete");
            assert_eq!(
                (h.source, h.destination),
                (None, None),
                "{ver_cmd:#x} {family:#x}"
            );
            assert_eq!(h.len, 16 + block.len());
        }
    }

    #[test]
    fn v2_refusals() {
        // Version nibble other than 2; commands 2..=15; families and transports undefined.
        assert_eq!(
            parse(&v2(0x11, 0x11, &[0; 12])),
            Err(ProxyError::V2Version(1))
        );
        assert_eq!(
            parse(&v2(0x31, 0x11, &[0; 12])),
            Err(ProxyError::V2Version(3))
        );
        for cmd in 2..=15u8 {
            assert_eq!(
                parse(&v2(0x20 | cmd, 0x11, &[0; 12])),
                Err(ProxyError::V2Command(cmd))
            );
        }
        for family in [0x41, 0x13, 0xf1, 0x1f, 0x03] {
            assert_eq!(
                parse(&v2(0x21, family, &[0; 12])),
                Err(ProxyError::V2Family(family))
            );
        }
        assert_eq!(
            parse(&v2(0x21, 0x11, &[0; 11])),
            Err(ProxyError::V2ShortAddress {
                family: 0x11,
                len: 11
            })
        );
        assert_eq!(
            parse(&v2(0x21, 0x21, &[0; 35])),
            Err(ProxyError::V2ShortAddress {
                family: 0x21,
                len: 35
            })
        );
        // A length over the cap is refused from the 16-byte fixed part alone.
        let mut fixed = V2_SIGNATURE.to_vec();
        fixed.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&fixed), Err(ProxyError::V2TooLong(16 + 0xffff)));
        let cap = v2(0x21, 0x11, &vec![0; MAX_HEADER - V2_FIXED]);
        assert!(matches!(parse(&cap), Ok(Some(h)) if h.len == MAX_HEADER));
        let over = v2(0x21, 0x11, &vec![0; MAX_HEADER - V2_FIXED + 1]);
        assert_eq!(
            parse(&over[..V2_FIXED]),
            Err(ProxyError::V2TooLong(MAX_HEADER + 1))
        );
    }

    /// Garbage is refused at its first byte that matches neither signature, so a client that
    /// speaks POP3 (or TLS) straight at a proxied listener is dropped at once.
    #[test]
    fn garbage_refused_early() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"USER alice\r\n"), Err(ProxyError::NotProxy(b'U', 0)));
        assert_eq!(parse(&[0x16, 3, 1]), Err(ProxyError::NotProxy(0x16, 0)));
        assert_eq!(parse(b"PRO"), Ok(None));
        assert_eq!(parse(b"PROXX"), Err(ProxyError::NotProxy(b'X', 4)));
        assert_eq!(parse(b"PROXYTCP4"), Err(ProxyError::NotProxy(b'T', 5)));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIT"), Ok(None));
        assert_eq!(
            parse(b"\r\n\r\n\0\r\nQUIZ"),
            Err(ProxyError::NotProxy(b'Z', 10))
        );
        assert_eq!(parse(b"\r\n"), Ok(None));
        assert_eq!(parse(b"\r\nUSER"), Err(ProxyError::NotProxy(b'U', 2)));
    }

    proptest! {
        /// Never panics; a verdict never changes as bytes are added; a header never claims
        /// more than it was given or more than the cap.
        #[test]
        fn arbitrary_bytes(prefix in prop::sample::select(vec![&b""[..], b"PROXY ", b"PROXY TCP4 ", &V2_SIGNATURE[..]]),
                           tail in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut input = prefix.to_vec();
            input.extend_from_slice(&tail);
            let whole = parse_all_ways(&input);
            if let Ok(Some(h)) = whole {
                prop_assert!(h.len <= input.len() && h.len <= MAX_HEADER);
            }
            // Undecided input is bounded: 107 octets for v1, the cap for v2.
            if input.len() >= MAX_HEADER || (input.first() == Some(&b'P') && input.len() >= MAX_V1_LINE) {
                prop_assert!(whole != Ok(None));
            }
        }

        /// Any TCP address pair round-trips through both versions, with trailing bytes left.
        #[test]
        fn round_trip(src in any::<SocketAddr>(), dst in any::<SocketAddr>(),
                      after in prop::collection::vec(any::<u8>(), 0..8)) {
            let dst = match (src, dst) {
                (SocketAddr::V4(_), SocketAddr::V6(d)) => {
                    let o = d.ip().octets();
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15])), d.port())
                }
                (SocketAddr::V6(_), SocketAddr::V4(d)) => SocketAddr::new(IpAddr::V6(d.ip().to_ipv6_mapped()), d.port()),
                _ => dst,
            };
            let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            let mut v1 = format!("PROXY {proto} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port()).into_bytes();
            let v1_len = v1.len();
            v1.extend_from_slice(&after);
            let mut block = Vec::new();
            let family = match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => { block.extend_from_slice(&s.octets()); block.extend_from_slice(&d.octets()); 0x11 }
                (IpAddr::V6(s), IpAddr::V6(d)) => { block.extend_from_slice(&s.octets()); block.extend_from_slice(&d.octets()); 0x21 }
                _ => unreachable!("same family"),
            };
            block.extend_from_slice(&src.port().to_be_bytes());
            block.extend_from_slice(&dst.port().to_be_bytes());
            let mut bin = v2(0x21, family, &block);
            let v2_len = bin.len();
            bin.extend_from_slice(&after);
            for (input, len) in [(v1, v1_len), (bin, v2_len)] {
                let h = parse_all_ways(&input).expect("valid").expect("complete");
                prop_assert_eq!(h.source, Some(SocketAddr::new(src.ip(), src.port())));
                prop_assert_eq!(h.destination, Some(SocketAddr::new(dst.ip(), dst.port())));
                prop_assert_eq!(h.len, len);
            }
        }
    }
}
