//! A separate host on this machine: a network namespace joined to the
//! test's own by a veth pair (`ip netns`, `ip link`), whose link can be cut
//! and healed. Traffic stays on the machine; the namespace and its veth are
//! removed when dropped.

use std::process::Command;

/// A namespace `10.<a>.<b>.2` reached from the test's side at
/// `10.<a>.<b>.1`.
pub struct Namespace {
    pub name: String,
    /// The test's end of the veth pair.
    host_link: String,
    /// Address of the test's end (the namespace reaches the test here).
    pub host_ip: String,
    /// Address inside the namespace.
    pub inner_ip: String,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Namespace {
    /// A new namespace, unique to this process and `tag` (0..=255).
    pub fn new(tag: u8) -> Namespace {
        let pid = std::process::id();
        let name = format!("sc{pid}-{tag}");
        // Interface names are at most 15 bytes.
        let id = format!("{:x}{tag:02x}", pid % 0x10_0000);
        let (host_link, inner_link) = (format!("sch{id}"), format!("scn{id}"));
        let (a, b) = (100 + (pid % 100) as u8, tag);
        let (host_ip, inner_ip) = (format!("10.{a}.{b}.1"), format!("10.{a}.{b}.2"));
        ip(&["netns", "add", &name]);
        let namespace = Namespace {
            name: name.clone(),
            host_link: host_link.clone(),
            host_ip: host_ip.clone(),
            inner_ip: inner_ip.clone(),
        };
        ip(&[
            "link",
            "add",
            &host_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner_link,
        ]);
        ip(&["link", "set", &inner_link, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{inner_ip}/30"), "dev", &inner_link]);
        inside(&["link", "set", &inner_link, "up"]);
        inside(&["link", "set", "lo", "up"]);
        namespace
    }

    /// What runs a program inside: `ip netns exec <name>`.
    pub fn wrapper(&self) -> Vec<&str> {
        vec!["ip", "netns", "exec", &self.name]
    }

    /// Cuts the link: packets stop both ways, no reset is sent.
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_link, "down"]);
    }

    pub fn heal(&self) {
        ip(&["link", "set", &self.host_link, "up"]);
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
