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

/// IPv4-mapped and IPv4-compatible IPv6 addresses are judged as the IPv4 address they carry.
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
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(address: Ipv6Addr) -> bool {
    let segments = address.segments();
    if address.is_unspecified() || address.is_loopback() || address.is_multicast() {
        return false;
    }
    // Unique local (fc00::/7), link local (fe80::/10), site local (fec0::/10).
    if (segments[0] & 0xfe00) == 0xfc00 || (segments[0] & 0xffc0) == 0xfe80 || (segments[0] & 0xffc0) == 0xfec0 {
        return false;
    }
    // Documentation (2001:db8::/32), discard (100::/64).
    if (segments[0] == 0x2001 && segments[1] == 0x0db8) || (segments[0] == 0x0100 && segments[1..4] == [0, 0, 0]) {
        return false;
    }
    // Addresses that embed an IPv4 address: judge the embedded one.
    if segments[0] == 0x2002 {
        let embedded = Ipv4Addr::new((segments[1] >> 8) as u8, segments[1] as u8, (segments[2] >> 8) as u8, segments[2] as u8);
        return is_public_v4(embedded);
    }
    if segments[0..6] == [0x0064, 0xff9b, 0, 0, 0, 0] || segments[0..6] == [0, 0, 0, 0, 0, 0] {
        let embedded = Ipv4Addr::new((segments[6] >> 8) as u8, segments[6] as u8, (segments[7] >> 8) as u8, segments[7] as u8);
        return is_public_v4(embedded);
    }
    true
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
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "2002:7f00:0001::",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!allowed(&policy, address), "{address} should be refused");
        }
        for address in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(allowed(&policy, address), "{address} should be allowed");
        }
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
