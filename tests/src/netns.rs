//! A private network for one test's members: each member in its own network namespace,
//! joined to the test's process by a veth pair on a bridge, so that the harness can cut
//! the links between members (network partitions) while clients still reach every
//! member.
//!
//! Layout, for a test with id `T` and subnet `10.A.B.0/24`:
//! - a bridge `rkT` in the test's namespace, holding 10.A.B.1 (where clients come from);
//! - per member i: a namespace `rkTnI`, a veth pair `rkTvI` (bridge side) ↔ `eth0` (in
//!   the namespace) holding 10.A.B.(10+i), and loopback up.
//!
//! Cutting uses blackhole routes only (iproute2, no firewall): `cut(from, to)` drops
//! every packet `from` sends to `to`. A TCP connection needs both directions, so a
//! one-way cut also stops the other direction's connections — as packet loss one way
//! does on a real network. Needs root (CI and scripts/test run as root); a failure to
//! set up is a test failure, never a skip.
//!
//! Never touches anything it did not create: every name carries the test's id.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Members one network can hold (addresses .10 to .10+MAX_MEMBERS-1).
pub const MAX_MEMBERS: usize = 16;

pub struct Net {
    id: String,
    subnet: [u8; 2],
    members: usize,
    /// The cuts in place, (from, to).
    cuts: BTreeSet<(usize, usize)>,
    /// Members cut off from the test process (its clients), both ways.
    client_cuts: BTreeSet<usize>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e} (is iproute2 installed?)", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("setting up the test network: {e} (network namespaces need root)");
    }
}

impl Net {
    /// A bridge and `members` namespaces, each with its address and loopback up.
    pub fn new(members: usize) -> Net {
        assert!(members <= MAX_MEMBERS, "at most {MAX_MEMBERS} members");
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Names stay under the 15-byte interface name limit; the subnet differs between
        // tests running at the same time (nextest runs each in its own process).
        let id = format!("{}{}", pid % 100_000, n % 100);
        let subnet = [100 + (n % 100) as u8, (pid % 250) as u8 + 1];
        let net = Net {
            id,
            subnet,
            members,
            cuts: BTreeSet::new(),
            client_cuts: BTreeSet::new(),
        };
        net.teardown();
        let bridge = net.bridge();
        must(&["link", "add", &bridge, "type", "bridge"]);
        must(&[
            "addr",
            "add",
            &format!("{}/24", net.addr_of_host()),
            "dev",
            &bridge,
        ]);
        must(&["link", "set", &bridge, "up"]);
        for i in 0..members {
            let ns = net.namespace(i);
            let veth = format!("rk{}v{i}", net.id);
            must(&["netns", "add", &ns]);
            must(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            must(&["link", "set", &veth, "master", &bridge]);
            must(&["link", "set", &veth, "up"]);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
            must(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                "eth0",
            ]);
            must(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("rk{}", self.id)
    }

    /// The namespace member `i` runs in (`ip netns exec <it> …`).
    pub fn namespace(&self, i: usize) -> String {
        format!("rk{}n{i}", self.id)
    }

    /// Member `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("10.{}.{}.{}", self.subnet[0], self.subnet[1], 10 + i)
    }

    /// The test process's address on the bridge.
    pub fn addr_of_host(&self) -> String {
        format!("10.{}.{}.1", self.subnet[0], self.subnet[1])
    }

    /// Drops every packet member `from` sends to member `to`.
    pub fn cut(&mut self, from: usize, to: usize) {
        if from == to || !self.cuts.insert((from, to)) {
            return;
        }
        must(&[
            "-n",
            &self.namespace(from),
            "route",
            "add",
            "blackhole",
            &format!("{}/32", self.addr(to)),
        ]);
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&mut self, a: usize, b: usize) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Cuts member `i` off from every other member, both directions (clients still
    /// reach it).
    pub fn isolate(&mut self, i: usize) {
        for other in 0..self.members {
            self.cut_both(i, other);
        }
    }

    /// Cuts member `i` off from the test process's clients: its answers to them are
    /// dropped, so their requests and connections to it time out.
    pub fn cut_from_clients(&mut self, i: usize) {
        if !self.client_cuts.insert(i) {
            return;
        }
        must(&[
            "-n",
            &self.namespace(i),
            "route",
            "add",
            "blackhole",
            &format!("{}/32", self.addr_of_host()),
        ]);
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        for i in std::mem::take(&mut self.client_cuts) {
            must(&[
                "-n",
                &self.namespace(i),
                "route",
                "del",
                "blackhole",
                &format!("{}/32", self.addr_of_host()),
            ]);
        }
        for (from, to) in std::mem::take(&mut self.cuts) {
            must(&[
                "-n",
                &self.namespace(from),
                "route",
                "del",
                "blackhole",
                &format!("{}/32", self.addr(to)),
            ]);
        }
    }

    /// The cuts in place, for reports.
    pub fn cuts(&self) -> Vec<(usize, usize)> {
        self.cuts.iter().copied().collect()
    }

    fn teardown(&self) {
        for i in 0..MAX_MEMBERS {
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it ours.
        self.teardown();
    }
}
