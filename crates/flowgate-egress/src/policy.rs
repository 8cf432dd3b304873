//! Which destination addresses outbound requests may reach.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Refuses loopback, private, link-local (cloud metadata), shared, reserved and other
/// non-public addresses, unless an allow-list entry covers them.
#[derive(Debug, Clone, Default)]
pub struct IpPolicy {
    allow: Vec<IpNet>,
}

impl IpPolicy {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Parses a comma- or space-separated list of CIDRs or addresses (`127.0.0.1,10.0.0.0/8`).
    pub fn from_allow_list(text: &str) -> Result<Self, String> {
        let mut allow = Vec::new();
        for entry in text.split([',', ' ', '\n']).map(str::trim).filter(|entry| !entry.is_empty()) {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("'{entry}' is not an IP address or CIDR range"))?;
            allow.push(net);
        }
        Ok(Self { allow })
    }

    pub fn allows(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        if self.allow.iter().any(|net| net.contains(&address)) {
            return true;
        }
        is_public(address)
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry (an allow-list entry
/// for `127.0.0.1` covers `::ffff:127.0.0.1`).
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(address: Ipv4Addr) -> bool {
    let [a, b, c, _] = address.octets();
    !(address.is_unspecified()
        || address.is_loopback()
        || address.is_private()
        || address.is_link_local()
        || address.is_broadcast()
        || address.is_multicast()
        || address.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast (deprecated)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn v4(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::new((high >> 8) as u8, high as u8, (low >> 8) as u8, low as u8)
}

/// The IPv4 address an IPv6 address carries on to an IPv4 network, for every translation and
/// tunnelling form that embeds one: IPv4-mapped (`::ffff:0:0/96`), IPv4-compatible (`::/96`),
/// IPv4-translated (SIIT, `::ffff:0:0:0/96`), NAT64 (`64:ff9b::/96`), 6to4 (`2002::/16`) and
/// ISATAP interface identifiers (`…:0:5efe:a.b.c.d`, `…:200:5efe:a.b.c.d`).
fn embedded_v4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = address.segments();
    match s {
        [0, 0, 0, 0, 0, 0xffff, high, low] | [0, 0, 0, 0, 0xffff, 0, high, low] | [0, 0, 0, 0, 0, 0, high, low] => Some(v4(high, low)),
        [0x0064, 0xff9b, 0, 0, 0, 0, high, low] => Some(v4(high, low)),
        [0x2002, high, low, ..] => Some(v4(high, low)),
        [_, _, _, _, id, 0x5efe, high, low] if id & !0x0300 == 0 => Some(v4(high, low)),
        _ => None,
    }
}

fn is_public_v6(address: Ipv6Addr) -> bool {
    let s = address.segments();
    if address.is_unspecified() || address.is_loopback() || address.is_multicast() {
        return false;
    }
    if let Some(embedded) = embedded_v4(address) {
        return is_public_v4(embedded);
    }
    let refused = (s[0] & 0xfe00) == 0xfc00 // unique local (fc00::/7)
        || (s[0] & 0xffc0) == 0xfe80 // link local (fe80::/10)
        || (s[0] & 0xffc0) == 0xfec0 // site local (fec0::/10)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation (2001:db8::/32)
        || (s[0] == 0x3fff && s[1] & 0xf000 == 0) // documentation (3fff::/20)
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard (100::/64)
        || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001) // local-use NAT64 (64:ff9b:1::/48), any IPv4 behind it
        || s[0] == 0x5f00 // SRv6 segment identifiers (5f00::/16)
        || (s[0] == 0x2001 && s[1] < 0x0200 && !globally_reachable_protocol_assignment(s)); // IETF protocol assignments (2001::/23), Teredo among them
    !refused
}

/// The parts of 2001::/23 IANA lists as globally reachable.
fn globally_reachable_protocol_assignment(s: [u16; 8]) -> bool {
    matches!(s, [0x2001, 0x0001, 0, 0, 0, 0, 0, 1 | 2]) // PCP and TURN anycast
        || s[1] == 0x0003 // AMT (2001:3::/32)
        || (s[1] == 0x0004 && s[2] == 0x0112) // AS112-v6 (2001:4:112::/48)
        || (s[1] & 0xfff0) == 0x0020 // ORCHIDv2 (2001:20::/28)
        || (s[1] & 0xfff0) == 0x0030 // DRIP (2001:30::/28)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(policy: &IpPolicy, address: &str) -> bool {
        policy.allows(address.parse().unwrap())
    }

    #[test]
    fn non_public_addresses_are_refused() {
        let policy = IpPolicy::default();
        for address in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.88.99.1",
            "198.18.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "100::1",
            "2001:db8::1",
            "3fff::1",
            "5f00::1",
        ] {
            assert!(!allowed(&policy, address), "{address} should be refused");
        }
        for address in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "2001:4860:4860::8888", "2001:3::1", "2001:20::1"] {
            assert!(allowed(&policy, address), "{address} should be allowed");
        }
    }

    /// Every form of IPv6 address that carries an IPv4 address on to an IPv4 network, for each
    /// refused IPv4 range, is refused; with a public IPv4 address inside, allowed.
    #[test]
    fn every_ipv6_form_that_embeds_ipv4_is_judged_by_the_ipv4_inside() {
        let policy = IpPolicy::default();
        type Embed = fn(Ipv4Addr) -> Ipv6Addr;
        let forms: [(&str, Embed); 7] = [
            ("mapped ::ffff:0:0/96", |v4| v4.to_ipv6_mapped()),
            ("compatible ::/96", |v4| v4.to_ipv6_compatible()),
            ("translated ::ffff:0:0:0/96", |v4| {
                let [a, b, c, d] = v4.octets();
                Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))
            }),
            ("NAT64 64:ff9b::/96", |v4| {
                let [a, b, c, d] = v4.octets();
                Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))
            }),
            ("6to4 2002::/16", |v4| {
                let [a, b, c, d] = v4.octets();
                Ipv6Addr::new(0x2002, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]), 0, 0, 0, 0, 1)
            }),
            ("ISATAP ::0:5efe:a.b.c.d", |v4| {
                let [a, b, c, d] = v4.octets();
                Ipv6Addr::new(0x2600, 0x1f18, 0, 0, 0, 0x5efe, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))
            }),
            ("ISATAP ::200:5efe:a.b.c.d", |v4| {
                let [a, b, c, d] = v4.octets();
                Ipv6Addr::new(0x2600, 0x1f18, 0, 0, 0x200, 0x5efe, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))
            }),
        ];
        let refused_v4 = [
            "0.0.0.1",
            "10.0.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "192.0.0.1",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.0.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
        ];
        for (form, embed) in forms {
            for inner in refused_v4 {
                let address = IpAddr::V6(embed(inner.parse().unwrap()));
                assert!(!policy.allows(address), "{form}: {address} (carrying {inner}) should be refused");
            }
            let address = IpAddr::V6(embed("93.184.216.34".parse().unwrap()));
            assert!(policy.allows(address), "{form}: {address} carries a public address");
        }
        // Forms whose IPv4 address cannot be read or lies behind a local translator: refused whole.
        for address in
            ["64:ff9b:1::7f00:1", "64:ff9b:1:5db8:d822::", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::1", "2001:2::1", "2001:10::1"]
        {
            assert!(!allowed(&policy, address), "{address} should be refused");
        }
        // The example: ::ffff:0:7f00:1 is 127.0.0.1, translated.
        assert!(!allowed(&policy, "::ffff:0:7f00:1"));
    }

    #[test]
    fn the_allow_list_opens_specific_ranges() {
        let policy = IpPolicy::from_allow_list("127.0.0.1, 10.0.0.0/8").unwrap();
        assert!(allowed(&policy, "127.0.0.1"));
        assert!(allowed(&policy, "::ffff:127.0.0.1"));
        assert!(allowed(&policy, "10.9.9.9"));
        assert!(!allowed(&policy, "127.0.0.2"));
        assert!(!allowed(&policy, "192.168.0.1"));
        assert!(IpPolicy::from_allow_list("not-an-ip").is_err());
    }
}
