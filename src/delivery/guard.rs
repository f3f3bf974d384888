//! The SSRF guard: webhook URLs come from the application's users, so walhook
//! sends only to public addresses unless the operator allows more.
//!
//! Host names are resolved by [`GuardedResolver`], which reqwest calls in place
//! of its own resolver, and the connection goes only to the addresses that
//! passed the check, so a DNS answer cannot change between check and connect.
//! URLs whose host is an IP literal never reach a resolver, so the sender
//! checks them with [`TargetPolicy::check`] before sending.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::DeliveryConfig;

/// A target address that the policy rejects.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "target address `{address}` is {category}: add its network to `delivery.allowed_networks` \
     or set `delivery.allow_private_targets = true`"
)]
pub struct TargetRejected {
    /// The rejected address.
    pub address: IpAddr,
    /// The kind of address, such as `loopback` or `private`.
    pub category: &'static str,
}

/// Policy of the target addresses that deliveries may connect to.
#[derive(Clone, Debug, Default)]
pub struct TargetPolicy {
    allow_private_targets: bool,
    allowed_networks: Vec<IpNet>,
}

impl TargetPolicy {
    /// Builds the policy of `delivery.allow_private_targets` and
    /// `delivery.allowed_networks`.
    pub fn from_config(config: &DeliveryConfig) -> TargetPolicy {
        TargetPolicy {
            allow_private_targets: config.allow_private_targets,
            allowed_networks: config.allowed_networks.clone(),
        }
    }

    /// Checks one address: public addresses pass, and non-public ones pass
    /// only inside an allowed network or when private targets are allowed.
    pub fn check(&self, address: IpAddr) -> Result<(), TargetRejected> {
        let Some(category) = non_public_category(address) else {
            return Ok(());
        };
        if self.allow_private_targets || self.is_allowed_network(address) {
            return Ok(());
        }
        Err(TargetRejected { address, category })
    }

    fn is_allowed_network(&self, address: IpAddr) -> bool {
        let canonical = canonical(address);
        self.allowed_networks
            .iter()
            .any(|network| network.contains(&address) || network.contains(&canonical))
    }
}

/// Returns the kind of a non-public address, or `None` for a public one.
/// IPv4-mapped (`::ffff:a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`) IPv6
/// addresses are judged by the IPv4 address they contain.
pub fn non_public_category(address: IpAddr) -> Option<&'static str> {
    match canonical(address) {
        IpAddr::V4(v4) => ipv4_category(v4),
        IpAddr::V6(v6) => ipv6_category(v6),
    }
}

fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => address,
        },
        IpAddr::V4(_) => address,
    }
}

fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052).
    let segments = v6.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [_, _, _, _, _, _, _, _, _, _, _, _, a, b, c, d] = v6.octets();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

fn ipv4_category(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, _, _] = v4.octets();
    let category = if v4 == Ipv4Addr::new(169, 254, 169, 254) {
        "a cloud metadata address"
    } else if v4.is_unspecified() || a == 0 {
        "unspecified"
    } else if v4.is_loopback() {
        "loopback"
    } else if v4.is_private() {
        "private"
    } else if v4.is_link_local() {
        "link-local"
    } else if a == 100 && (64..128).contains(&b) {
        "shared address space (CGNAT, 100.64.0.0/10)"
    } else if v4.is_multicast() {
        "multicast"
    } else if v4.is_broadcast() || a >= 240 {
        "reserved"
    } else {
        return None;
    };
    Some(category)
}

fn ipv6_category(v6: Ipv6Addr) -> Option<&'static str> {
    let first = v6.segments()[0];
    let category = if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        "a cloud metadata address"
    } else if v6.is_unspecified() {
        "unspecified"
    } else if v6.is_loopback() {
        "loopback"
    } else if first & 0xfe00 == 0xfc00 {
        "private (unique local)"
    } else if first & 0xffc0 == 0xfe80 {
        "link-local"
    } else if first & 0xffc0 == 0xfec0 {
        "site-local"
    } else if v6.is_multicast() {
        "multicast"
    } else {
        return None;
    };
    Some(category)
}

/// A reqwest resolver that resolves with the system resolver and keeps only
/// the addresses that [`TargetPolicy`] lets through.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    policy: Arc<TargetPolicy>,
}

impl GuardedResolver {
    /// Creates a resolver that applies `policy`.
    pub fn new(policy: Arc<TargetPolicy>) -> GuardedResolver {
        GuardedResolver { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs = filter_addresses(&policy, resolved)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Keeps the permitted addresses. When none is left, returns the rejection of
/// the first address, so the error names an address and the setting to change.
fn filter_addresses(
    policy: &TargetPolicy,
    resolved: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, TargetRejected> {
    let mut first_rejection = None;
    let mut permitted = Vec::with_capacity(resolved.len());
    for addr in resolved {
        match policy.check(addr.ip()) {
            Ok(()) => permitted.push(addr),
            Err(rejected) => {
                first_rejection.get_or_insert(rejected);
            }
        }
    }
    match (permitted.is_empty(), first_rejection) {
        (true, Some(rejected)) => Err(rejected),
        _ => Ok(permitted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address parses")
    }

    fn strict() -> TargetPolicy {
        TargetPolicy::default()
    }

    #[test]
    fn ipv4_non_public_is_rejected() {
        let cases = [
            ("0.0.0.0", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.1.1", "link-local"),
            ("169.254.169.254", "a cloud metadata address"),
            ("100.64.0.1", "shared address space (CGNAT, 100.64.0.0/10)"),
            (
                "100.127.255.255",
                "shared address space (CGNAT, 100.64.0.0/10)",
            ),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
        ];
        for (address, category) in cases {
            assert_eq!(
                non_public_category(ip(address)),
                Some(category),
                "{address}"
            );
        }
    }

    #[test]
    fn ipv4_public_passes() {
        for address in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "1.1.1.1",
        ] {
            assert_eq!(non_public_category(ip(address)), None, "{address}");
        }
    }

    #[test]
    fn ipv6_non_public_is_rejected() {
        let cases = [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "private (unique local)"),
            ("fd12:3456::1", "private (unique local)"),
            ("fd00:ec2::254", "a cloud metadata address"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
        ];
        for (address, category) in cases {
            assert_eq!(
                non_public_category(ip(address)),
                Some(category),
                "{address}"
            );
        }
    }

    #[test]
    fn ipv6_public_passes() {
        for address in ["2001:4860:4860::8888", "2606:4700::1111"] {
            assert_eq!(non_public_category(ip(address)), None, "{address}");
        }
    }

    #[test]
    fn mapped_ipv4_is_judged_as_ipv4() {
        let cases = [
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:10.0.0.1", Some("private")),
            ("::ffff:169.254.169.254", Some("a cloud metadata address")),
            ("64:ff9b::192.168.0.1", Some("private")),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::8.8.8.8", None),
        ];
        for (address, category) in cases {
            assert_eq!(non_public_category(ip(address)), category, "{address}");
        }
    }

    #[test]
    fn rejection_names_address_and_settings() {
        let err = strict()
            .check(ip("10.0.0.5"))
            .expect_err("private is rejected");
        let message = err.to_string();
        assert!(message.contains("`10.0.0.5`"), "{message}");
        assert!(message.contains("delivery.allowed_networks"), "{message}");
        assert!(
            message.contains("delivery.allow_private_targets"),
            "{message}"
        );
    }

    #[test]
    fn allowed_network_lets_address_through() {
        let policy = TargetPolicy {
            allow_private_targets: false,
            allowed_networks: vec!["127.0.0.1/32".parse().expect("network parses")],
        };
        assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("::ffff:127.0.0.1")), Ok(()), "mapped form");
        assert!(
            policy.check(ip("127.0.0.2")).is_err(),
            "outside the network"
        );
    }

    #[test]
    fn allow_private_targets_lets_all_through() {
        let policy = TargetPolicy {
            allow_private_targets: true,
            allowed_networks: Vec::new(),
        };
        assert_eq!(policy.check(ip("169.254.169.254")), Ok(()));
        assert_eq!(policy.check(ip("::1")), Ok(()));
    }

    #[test]
    fn filter_keeps_only_permitted() {
        let resolved = vec![
            SocketAddr::new(ip("10.0.0.1"), 443),
            SocketAddr::new(ip("8.8.8.8"), 443),
        ];
        let kept = filter_addresses(&strict(), resolved).expect("one address is public");
        assert_eq!(kept, vec![SocketAddr::new(ip("8.8.8.8"), 443)]);
    }

    #[test]
    fn filter_rejects_when_nothing_left() {
        let resolved = vec![SocketAddr::new(ip("127.0.0.1"), 80)];
        let err = filter_addresses(&strict(), resolved).expect_err("loopback only");
        assert_eq!(err.address, ip("127.0.0.1"));
    }
}
