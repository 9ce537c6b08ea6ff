//! The clients' side: listening for announcements, and keeping the schedulers of one's own
//! cluster that were heard lately.

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{net::UdpSocket, sync::Notify};
use tracing::{debug, info, warn};

use super::{Announcement, Heard, announcement::MAX_DATAGRAM, describe_interfaces, interfaces};
use crate::token::Token;

/// A socket joined to the announcement group on every interface.
pub struct Listener {
    socket: UdpSocket,
    group: Ipv4Addr,
    /// The interface addresses it joined the group on.
    joined: Mutex<HashSet<Ipv4Addr>>,
    /// What it listens on, for the log of a client that hears nothing.
    pub describe: String,
}

impl Listener {
    /// Binds the group's port (shared with other listeners on this machine) and joins the group
    /// on every interface.
    pub fn bind(group: SocketAddrV4) -> std::io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        // Several agents (and drivers) on one machine all hear every announcement.
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, group.port())).into())?;
        let listener = Self {
            socket: UdpSocket::from_std(socket.into())?,
            group: *group.ip(),
            joined: Mutex::new(HashSet::new()),
            describe: format!("{group} on {}", describe_interfaces(&interfaces())),
        };
        listener.rejoin();
        Ok(listener)
    }

    /// Joins the group on interfaces that came up since the last time (a container's network,
    /// a VPN, a cable plugged in late).
    pub fn rejoin(&self) {
        let Ok(mut joined) = self.joined.lock() else {
            return;
        };
        for (name, ip) in interfaces() {
            if joined.contains(&ip) {
                continue;
            }
            match socket2::SockRef::from(&self.socket).join_multicast_v4(&self.group, &ip) {
                Ok(()) => {
                    debug!("listening for schedulers on {name} ({ip})");
                    joined.insert(ip);
                }
                Err(err) => debug!("cannot join {} on {name} ({ip}): {err}", self.group),
            }
        }
    }

    /// The next Ladle announcement, as a holder of `token` reads it, with where it came from.
    pub async fn recv(&self, token: Option<&Token>) -> std::io::Result<(Heard, SocketAddr)> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, from) = self.socket.recv_from(&mut buf).await?;
            match Announcement::decode(&buf[..n], token) {
                Heard::Foreign => {
                    debug!(%from, "ignored a datagram that is not a Ladle announcement")
                }
                heard => return Ok((heard, from)),
            }
        }
    }
}

/// A scheduler heard lately.
#[derive(Clone, Debug)]
struct Seen {
    announcement: Announcement,
    from: SocketAddr,
    at: Instant,
}

/// The schedulers of one cluster heard on the network, kept up to date in the background.
#[derive(Clone)]
pub struct Watch {
    inner: Arc<WatchInner>,
    pub describe: String,
    pub cluster: String,
}

struct WatchInner {
    /// By the address announcements came from: a restarted scheduler replaces its old self.
    heard: Mutex<HashMap<std::net::IpAddr, Seen>>,
    changed: Notify,
}

/// Bounds on what the network can make a listener keep.
const MAX_SCHEDULERS: usize = 64;
const MAX_LOGGED: usize = 256;
/// A scheduler not heard for this long is forgotten.
const FORGET: Duration = Duration::from_secs(60);
/// How often a listener looks for interfaces that came up since it started.
const REJOIN: Duration = Duration::from_secs(10);

/// An announcement older than this no longer counts as a live scheduler.
const FRESH: Duration = Duration::from_secs(5);

impl Watch {
    /// Listens (in a task of its own) for the schedulers of `cluster` that speak `protocol`;
    /// those of other clusters or protocols are ignored with one log line each.
    pub fn start(listener: Listener, cluster: String, protocol: u32, token: Option<Token>) -> Self {
        let inner = Arc::new(WatchInner {
            heard: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        });
        let describe = listener.describe.clone();
        let task_inner = inner.clone();
        let wanted = cluster.clone();
        tokio::spawn(async move {
            // What was logged once already (bounded: the network decides what arrives).
            let mut logged: HashSet<(String, std::net::IpAddr)> = HashSet::new();
            let mut say_once = |key: (String, std::net::IpAddr), line: String| {
                if logged.len() < MAX_LOGGED && logged.insert(key) {
                    info!("{line}");
                }
            };
            let mut interfaces = tokio::time::interval(REJOIN);
            loop {
                let received = tokio::select! {
                    received = listener.recv(token.as_ref()) => received,
                    _ = interfaces.tick() => {
                        listener.rejoin();
                        continue;
                    }
                };
                let (heard, from) = match received {
                    Ok(heard) => heard,
                    Err(err) => {
                        warn!("listening for schedulers failed: {err}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let announcement = match heard {
                    Heard::Trusted(a) => a,
                    Heard::Untrusted(a, why) => {
                        say_once(
                            (format!("untrusted {}", a.cluster), from.ip()),
                            format!(
                                "ignoring the scheduler of cluster {:?} announced from {from}: {why}",
                                a.cluster
                            ),
                        );
                        continue;
                    }
                    Heard::Foreign => continue,
                };
                if announcement.cluster != wanted {
                    say_once(
                        (announcement.cluster.clone(), from.ip()),
                        format!(
                            "ignoring the scheduler of cluster {:?} at {} (from {from}): this is cluster {wanted:?}",
                            announcement.cluster,
                            announcement.addresses.join(", ")
                        ),
                    );
                    continue;
                }
                if announcement.protocol != protocol {
                    say_once(
                        (format!("protocol {}", announcement.protocol), from.ip()),
                        format!(
                            "ignoring the scheduler at {} (from {from}): it speaks protocol {}, this release speaks {protocol} (ladle {} there)",
                            announcement.addresses.join(", "),
                            announcement.protocol,
                            announcement.version
                        ),
                    );
                    continue;
                }
                if let Ok(mut heard) = task_inner.heard.lock() {
                    heard.retain(|_, seen| seen.at.elapsed() < FORGET);
                    if heard.len() >= MAX_SCHEDULERS && !heard.contains_key(&from.ip()) {
                        let oldest = heard.iter().min_by_key(|(_, s)| s.at).map(|(ip, _)| *ip);
                        if let Some(ip) = oldest {
                            heard.remove(&ip);
                        }
                    }
                    heard.insert(
                        from.ip(),
                        Seen {
                            announcement,
                            from,
                            at: Instant::now(),
                        },
                    );
                }
                task_inner.changed.notify_waiters();
            }
        });
        Self {
            inner,
            describe,
            cluster,
        }
    }

    /// The addresses of the newest live scheduler of the cluster, the one the announcement came
    /// from first; waits up to `within` for one to be heard.
    pub async fn addresses(&self, within: Duration) -> Option<Vec<String>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.inner.changed.notified();
            if let Some(found) = self.newest() {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    fn newest(&self) -> Option<Vec<String>> {
        let heard = self.inner.heard.lock().ok()?;
        let live = heard.values().filter(|h| h.at.elapsed() < FRESH);
        // The newest live scheduler; with none live, the last one heard (it may be back soon).
        let pick = live
            .max_by_key(|h| h.announcement.started_ms)
            .or_else(|| heard.values().max_by_key(|h| h.at))?;
        let source = pick.from.ip().to_string();
        let mut addresses = pick.announcement.addresses.clone();
        // The address the datagram came from is reachable from here by construction.
        addresses.sort_by_key(|a| !a.contains(&format!("//{source}:")));
        Some(addresses)
    }
}

/// Fuzz target of a listener as it runs: random and damaged datagrams sent to it over loopback,
/// then an announcement it must still hear. 32 cases of up to 16 datagrams: each case waits
/// for its last datagram to be heard (about a millisecond), so the test takes a fraction of a
/// second; `PROPTEST_CASES` runs more.
#[cfg(test)]
mod fuzz_tests {
    use std::cell::Cell;

    use ladle_fuzz::{arbitrary_bytes, config, mutations_of_any};
    use proptest::{prelude::*, test_runner::TestRunner};

    use super::*;

    const CLUSTER: &str = "fuzz";
    const PROTOCOL: u32 = 2;

    fn announcement(addresses: Vec<String>, started_ms: u64) -> Announcement {
        Announcement {
            cluster: CLUSTER.into(),
            addresses,
            protocol: PROTOCOL,
            version: "0.1.0".into(),
            started_ms,
        }
    }

    #[test]
    fn a_listener_survives_garbage_datagrams_and_still_hears_its_scheduler() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a runtime: {e}"));
        let port = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.local_addr())
            .unwrap_or_else(|e| panic!("a free port: {e}"))
            .port();
        let (watch, sender) = runtime.block_on(async {
            let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 76, 99), port);
            let listener = Listener::bind(group).unwrap_or_else(|e| panic!("bind: {e}"));
            let sender = UdpSocket::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("a sender: {e}"));
            (
                Watch::start(listener, CLUSTER.into(), PROTOCOL, None),
                sender,
            )
        });
        let valid = vec![
            announcement(vec!["http://10.0.0.1:7070".into()], 1).encode(None),
            Announcement {
                cluster: "other".into(),
                ..announcement(vec![], 2)
            }
            .encode(None),
        ];
        let datagrams = prop::collection::vec(
            prop_oneof![arbitrary_bytes(1024), mutations_of_any(valid)],
            0..16,
        );
        let case = Cell::new(0u64);
        let mut runner = TestRunner::new(config(32));
        let result = runner.run(&datagrams, |datagrams| {
            case.set(case.get() + 1);
            let mark = format!("http://127.0.0.1:{}", case.get());
            runtime.block_on(async {
                for datagram in &datagrams {
                    let _ = sender.send_to(datagram, ("127.0.0.1", port)).await;
                }
                let last = announcement(vec![mark.clone()], u64::MAX).encode(None);
                let _ = sender.send_to(&last, ("127.0.0.1", port)).await;
                // The datagrams are heard in order: once the last is, the others were, and the
                // listener's task is still there.
                let deadline = Instant::now() + Duration::from_secs(5);
                while watch.newest() != Some(vec![mark.clone()]) {
                    prop_assert!(
                        Instant::now() < deadline,
                        "the listener stopped hearing after {} datagrams",
                        datagrams.len()
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Ok(())
            })
        });
        if let Err(failure) = result {
            panic!("{failure}");
        }
    }
}
