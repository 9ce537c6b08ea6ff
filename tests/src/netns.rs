//! Several test hosts on this machine: each a network namespace with its own address, all
//! plugged into one bridge that lives in a namespace of its own (so the machine's own firewall
//! and interfaces see none of their traffic).

use std::{
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static LABS: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    switch: String,
    pub hosts: Vec<Host>,
}

pub struct Host {
    pub ns: String,
    pub ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lab {
    /// `n` hosts on one bridge, or why they cannot be made here (not root, no `ip`).
    pub fn new(n: usize) -> Result<Self, String> {
        let id = (std::process::id() % 1000) * 10 + LABS.fetch_add(1, Ordering::Relaxed) % 10;
        let switch = format!("ladle-sw-{id}");
        ip(&["netns", "add", &switch])?;
        let mut lab = Self {
            switch,
            hosts: Vec::new(),
        };
        let subnet = format!("10.{}.{}", 100 + id / 256 % 100, id % 256);
        ip(&["-n", &lab.switch, "link", "add", "br0", "type", "bridge"])?;
        // Without a querier, snooping would keep announcements from the listeners.
        ip(&[
            "-n",
            &lab.switch,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &lab.switch, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("ladle-{id}-{i}");
            ip(&["netns", "add", &ns])?;
            let port = format!("p{i}");
            let address = format!("{subnet}.{}", i + 1);
            lab.hosts.push(Host {
                ns: ns.clone(),
                ip: address.clone(),
            });
            ip(&[
                "-n",
                &lab.switch,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ])?;
            ip(&["-n", &lab.switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &lab.switch, "link", "set", &port, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "route", "add", "default", "dev", "eth0"])?;
        }
        Ok(lab)
    }

    /// Pulls host `i`'s cable out at the switch: from now on its packets, and those sent to it,
    /// are dropped without a word (no reset, no error), so its established connections hang as
    /// they would across a failed network, and carry on once [`Lab::reconnect`] plugs it back.
    pub fn disconnect(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.switch, "link", "set", &format!("p{i}"), "down"])
    }

    /// Gives hosts names every host resolves (`ip netns exec` reads /etc/netns/NS/hosts in
    /// place of /etc/hosts), as a cluster's DNS would.
    pub fn name_hosts(&self, names: &[(usize, &str)]) -> Result<(), String> {
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for (i, name) in names {
            let host = self.hosts.get(*i).ok_or("no such host")?;
            hosts.push_str(&format!("{} {name}\n", host.ip));
        }
        for host in &self.hosts {
            let dir = Path::new("/etc/netns").join(&host.ns);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::write(dir.join("hosts"), &hosts)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// Plugs host `i` back into the switch.
    pub fn reconnect(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.switch, "link", "set", &format!("p{i}"), "up"])
    }
}

impl Host {
    /// `program` to be run inside this host's namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = crate::clean_command(Path::new("ip"));
        command.args(["netns", "exec", &self.ns]).arg(program);
        command
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = ip(&["netns", "delete", &host.ns]);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&host.ns));
        }
        let _ = ip(&["netns", "delete", &self.switch]);
    }
}
