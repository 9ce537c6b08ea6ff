//! The scheduler's side: an announcement on every interface, about once a second.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use socket2::SockRef;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use super::{Announcement, describe_interfaces, interfaces};

pub struct Announcer {
    pub group: SocketAddrV4,
    pub ttl: u32,
    pub interval: Duration,
    pub announcement: Announcement,
    /// The scheduler's gRPC port, for the addresses of interfaces that come and go.
    pub port: u16,
    /// Whether the addresses follow the interfaces (the scheduler listens on all of them):
    /// then each announcement lists every interface's address, as the interfaces are now.
    pub per_interface: bool,
    /// "https" when the scheduler speaks TLS, else "http".
    pub scheme: &'static str,
    /// Signs the announcements, so that agents of this cluster believe them and no others.
    pub token: Option<crate::token::Token>,
}

impl Announcer {
    /// Announces until dropped (run it in a task of its own).
    pub async fn run(mut self) {
        let socket = match UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await {
            Ok(socket) => socket,
            Err(err) => {
                warn!(
                    "cannot open a UDP socket to announce this scheduler: {err}; agents must be given its address"
                );
                return;
            }
        };
        if let Err(err) = socket.set_multicast_ttl_v4(self.ttl) {
            debug!("cannot set the multicast TTL: {err}");
        }
        let mut ticker = tokio::time::interval(self.interval);
        let mut said = String::new();
        loop {
            ticker.tick().await;
            let list = interfaces();
            if self.per_interface {
                self.announcement.addresses = list
                    .iter()
                    .map(|(_, ip)| format!("{}://{ip}:{}", self.scheme, self.port))
                    .collect();
            }
            let described = describe_interfaces(&list);
            if described != said {
                info!(
                    "announcing cluster {:?} at {} on {} via {described}",
                    self.announcement.cluster,
                    self.announcement.addresses.join(", "),
                    self.group
                );
                said = described;
            }
            let datagram = self.announcement.encode(self.token.as_ref());
            for (name, ip) in &list {
                // One send per interface: multicast otherwise leaves by the default route only.
                if let Err(err) = SockRef::from(&socket).set_multicast_if_v4(ip) {
                    debug!("cannot announce on {name} ({ip}): {err}");
                    continue;
                }
                if let Err(err) = socket.send_to(&datagram, self.group).await {
                    debug!("cannot announce on {name} ({ip}): {err}");
                }
            }
        }
    }
}
