//! The address a client is counted by.

use std::net::IpAddr;

/// The address a host is known by: an IPv4 address, or an IPv6 address's /64 (one host may use
/// any address in its prefix, so counting single IPv6 addresses would count nothing).
pub fn host(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_host_is_its_64_prefix_and_a_mapped_ipv4_is_itself() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(host(a), host(b));
        assert_ne!(host(a), host(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(host(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
