//! How agents and drivers find the scheduler: the scheduler announces itself on UDP multicast,
//! and a client takes its address from there, from a file the scheduler wrote, from a DNS name
//! (every address it resolves to is tried), or as given.

mod announcement;
mod announcer;
mod listener;
mod locator;

pub use announcement::{Announcement, Heard};
pub use announcer::Announcer;
pub use listener::{Listener, Watch};
pub use locator::{Candidate, LocateError, Locator};

use std::net::Ipv4Addr;

/// The multicast group schedulers announce on unless told otherwise (organisation-local scope).
pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 76, 76);
/// The UDP port of the announcements.
pub const DEFAULT_PORT: u16 = 7071;

/// The IPv4 interfaces multicast can use: up, not loopback.
pub fn interfaces() -> Vec<(String, Ipv4Addr)> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback())
        .filter_map(|i| match i.ip() {
            std::net::IpAddr::V4(ip) => Some((i.name, ip)),
            std::net::IpAddr::V6(_) => None,
        })
        .collect()
}

/// `eth0 10.0.0.2, eth1 192.168.1.4`, for logs.
pub fn describe_interfaces(list: &[(String, Ipv4Addr)]) -> String {
    if list.is_empty() {
        return "no interface but loopback".into();
    }
    list.iter()
        .map(|(name, ip)| format!("{name} {ip}"))
        .collect::<Vec<_>>()
        .join(", ")
}
