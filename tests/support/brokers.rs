//! Real brokers for the cluster tests: `redis-server` and `nats-server`
//! (Debian's packages, installed by `scripts/test.sh`) started on a free
//! port of 127.0.0.1 and killed when dropped. Readiness is waited for by
//! connecting, never by sleeping.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{wait_healthy, Server, DEADLINE};

/// A port nothing listens on now (the OS picked it; it may be taken by
/// the time it is used, which the start-up check would show).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` process.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Append-only file, fsynced on every write: a restart keeps every
    /// acknowledged write.
    durable: bool,
    /// Addresses it listens on besides 127.0.0.1.
    also_bind: Vec<String>,
}

/// A node of two shards on the broker at `url` (`--engine engine`), once
/// its links are up.
fn node(engine: &str, url_flag: &str, url: &str, id: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--shards",
        "2",
        "--engine",
        engine,
        url_flag,
        url,
        "--node-id",
        id,
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    wait_healthy(&server);
    server
}

impl Redis {
    /// A node of two shards on this Redis, with `extra` arguments.
    pub fn node(&self, id: &str, extra: &[&str]) -> Server {
        node("redis", "--redis-url", &self.url(), id, extra)
    }

    /// A Redis that keeps nothing on disk.
    pub fn start() -> Redis {
        Redis::launch(false, &[])
    }

    /// A Redis with `appendfsync always`, for restarts that lose nothing.
    pub fn start_durable() -> Redis {
        Redis::launch(true, &[])
    }

    /// A durable Redis also listening on `addresses` (e.g. a veth's).
    pub fn start_bound(addresses: &[&str]) -> Redis {
        Redis::launch(true, addresses)
    }

    fn launch(durable: bool, also_bind: &[&str]) -> Redis {
        let dir = std::env::temp_dir().join(format!(
            "shardcast-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            port: free_port(),
            dir,
            child: None,
            durable,
            also_bind: also_bind.iter().map(|a| a.to_string()).collect(),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        let bind = std::iter::once("127.0.0.1".to_string())
            .chain(self.also_bind.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        command
            .args(["--port", &port, "--bind", &bind, "--save", ""])
            // Other hosts (namespaces) may connect without a password.
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        if self.durable {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        }
        self.child = Some(
            command
                .spawn()
                .expect("start redis-server (apt-get install redis-server)"),
        );
        let deadline = Instant::now() + DEADLINE;
        while self.command(&["PING"]).as_deref() != Some("+PONG\r\n") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal to the process (`SIGSTOP` stalls it: it reads
    /// nothing and answers nothing until `SIGCONT`).
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid, which we have not
            // waited for (so it was not reused).
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// One command in the inline protocol; the raw reply (`None` when
    /// Redis cannot be reached).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = vec![0u8; 64 << 10];
        let n = stream.read(&mut reply).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&reply[..n]).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `nats-server` process.
pub struct Nats {
    pub port: u16,
    child: Child,
}

impl Nats {
    /// A node of two shards on this NATS, with `extra` arguments.
    pub fn node(&self, id: &str, extra: &[&str]) -> Server {
        node("nats", "--nats-url", &self.url(), id, extra)
    }

    pub fn start() -> Nats {
        let port = free_port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("start nats-server (apt-get install nats-server)");
        let deadline = Instant::now() + DEADLINE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Nats { port, child }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
