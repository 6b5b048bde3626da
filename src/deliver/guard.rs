//! The outbound guard: a webhook URL is parsed here, and every address it resolves to is checked
//! before a connection is made; private, loopback, link-local and other non-public ranges are refused
//! unless the endpoint allows them. The connection then goes to the address that was checked, never
//! resolved again, so a name cannot change its answer between the check and the connect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A webhook target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https` or not.
    pub tls: bool,
    /// The host as written (a name, or an address without brackets).
    pub host: String,
    /// The port (the scheme's by default).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Parses an `http://` or `https://` URL (no user info, no fragment).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    if url.contains('#') {
        return Err(format!("{url:?} has a fragment"));
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = if path.is_empty() {
        "/".to_owned()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    if authority.contains('@') {
        return Err(format!("{url:?} carries user info; put credentials in the secret, not the URL"));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
        let host = &v6[..end];
        let port = match &v6[end + 1..] {
            "" => default_port,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("{url:?}: bad port"))?,
        };
        (host.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?),
            None => (authority.to_owned(), default_port),
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} has no usable host"));
    }
    Ok(Target { tls, host: host.to_ascii_lowercase(), port, path })
}

/// An IPv4 address written the ways `inet_aton` reads them: `2130706433`, `0x7f000001`, `0177.0.0.1`,
/// `127.1`. A resolver would turn these into addresses; reading them here means the guard sees them
/// whatever the resolver does.
pub fn loose_ipv4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(4);
    for p in &parts {
        let n = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            u64::from_str_radix(h, 16).ok()?
        } else if p.len() > 1 && p.starts_with('0') {
            u64::from_str_radix(&p[1..], 8).ok()?
        } else {
            p.parse::<u64>().ok()?
        };
        nums.push(n);
    }
    let last = *nums.last()?;
    let head = &nums[..nums.len() - 1];
    if head.iter().any(|&n| n > 255) || last >= 1u64 << (8 * (4 - head.len())) {
        return None;
    }
    let mut v: u32 = 0;
    for (i, &n) in head.iter().enumerate() {
        v |= (n as u32) << (24 - 8 * i);
    }
    Some(Ipv4Addr::from(v | last as u32))
}

/// Why an address is not public, if it is not.
pub fn private_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => private_v6(v6),
    }
}

fn private_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => "this-network (0.0.0.0/8)",
        [10, ..] => "private (10.0.0.0/8)",
        [100, b, ..] if (64..128).contains(&b) => "shared address space (100.64.0.0/10)",
        [127, ..] => "loopback (127.0.0.0/8)",
        [169, 254, ..] => "link-local (169.254.0.0/16, cloud metadata)",
        [172, b, ..] if (16..32).contains(&b) => "private (172.16.0.0/12)",
        [192, 0, 0, _] => "IETF protocol assignments (192.0.0.0/24)",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation range",
        [192, 168, ..] => "private (192.168.0.0/16)",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking (198.18.0.0/15)",
        [a, ..] if a >= 224 => "multicast or reserved (224.0.0.0/3)",
        _ => return None,
    })
}

fn private_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return private_v4(v4).map(|_| "an IPv4-mapped private address");
    }
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    // IPv4-compatible (deprecated) and NAT64 forms carry an IPv4 address in the low 32 bits.
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0; 6] || (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4]) {
        return private_v4(low).map(|_| "an IPv4-embedding form of a private address");
    }
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return private_v4(v4).map(|_| "a 6to4 form of a private address");
    }
    Some(match s[0] {
        x if x & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        x if x & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        x if x & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        0x2001 if s[1] == 0x0db8 => "documentation (2001:db8::/32)",
        _ => return None,
    })
}

/// Checks every address a target resolved to. With `allow_private`, anything goes; else one
/// non-public address refuses the whole name (a name answering both is a rebinding attempt).
pub fn vet(host: &str, addrs: &[SocketAddr], allow_private: bool) -> Result<SocketAddr, String> {
    let first = *addrs.first().ok_or_else(|| format!("{host} resolved to no address"))?;
    if allow_private {
        return Ok(first);
    }
    for a in addrs {
        if let Some(why) = private_range(a.ip()) {
            return Err(format!(
                "{host} resolves to {} ({why}); refused unless the endpoint sets allow_private = true",
                a.ip()
            ));
        }
    }
    Ok(first)
}

/// The literal address a host names, in any form a resolver would accept.
pub fn literal(host: &str) -> Option<IpAddr> {
    host.parse::<IpAddr>().ok().or_else(|| loose_ipv4(host).map(IpAddr::V4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> bool {
        let t = parse_url(url).unwrap();
        let ip = literal(&t.host).expect("a literal address");
        vet(&t.host, &[SocketAddr::new(ip, t.port)], false).is_err()
    }

    #[test]
    fn every_spelling_of_a_private_address_is_refused() {
        for url in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://0xa9fea9fe/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[64:ff9b::a00:1]/",
            "http://10.1.2.3/",
            "http://192.168.1.1/",
            "http://172.31.0.1/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
        ] {
            assert!(refused(url), "{url} should be refused");
        }
        for url in ["http://8.8.8.8/", "https://[2606:4700::1111]/", "http://172.32.0.1/"] {
            assert!(!refused(url), "{url} is public");
        }
        let lo = SocketAddr::from(([127, 0, 0, 1], 80));
        assert_eq!(vet("x", &[lo], true), Ok(lo));
        let public = SocketAddr::from(([8, 8, 8, 8], 80));
        assert!(vet("both", &[public, lo], false).is_err(), "one private answer refuses the name");
    }

    #[test]
    fn urls_are_parsed_strictly() {
        let t = parse_url("https://GW.example:8443/hooks/vigil?x=1").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (true, "gw.example", 8443, "/hooks/vigil?x=1")
        );
        assert_eq!(parse_url("http://gw").unwrap().path, "/");
        assert_eq!(parse_url("http://[::1]/").unwrap().host, "::1");
        for bad in ["ftp://x/", "http://user:pw@x/", "http:///x", "http://x:99999/", "http://x/#f"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert_eq!(loose_ipv4("256.1.1.1"), None);
        assert_eq!(loose_ipv4("gw"), None);
    }
}
