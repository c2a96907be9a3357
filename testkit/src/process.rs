//! The workspace's binaries run as the operator runs them: a child process
//! configured through its environment, ready when it tells a `Type=notify`
//! socket so (`READY=1`, with the address it bound), stopped by SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};

/// A binary of this workspace, built next to the running test's own
/// executable (`<target>/<profile>/`): `cargo test --workspace` builds it
/// for locsvc's and proxy-shim's own tests.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // <target>/<profile>/deps/<test>-<hash>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is not built: run `cargo test --workspace` (or `cargo build --bins`)",
        bin.display()
    );
    bin
}

/// A UDP port that was free a moment ago, for a peer (sipp) that must
/// bind a port known before it starts.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running service process.
pub struct Service {
    name: String,
    child: Child,
    /// Its `STATUS=` line at READY.
    status: String,
    stderr: PathBuf,
}

impl Service {
    /// Starts `name` (a workspace binary) with `args` and `env` in `dir`
    /// (no other `LOCSVC_*` or `PROXY_SHIM_*` variable), and waits (at
    /// most `within`) for its READY=1.
    pub async fn start(
        name: &str,
        args: &[&str],
        env: &[(impl AsRef<str>, impl AsRef<str>)],
        dir: &Path,
        within: Duration,
    ) -> Self {
        let socket_path = dir.join(format!("{name}.notify"));
        let _ = std::fs::remove_file(&socket_path);
        let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
        let stderr = dir.join(format!("{name}.stderr"));
        let mut cmd = Command::new(workspace_binary(name));
        cmd.args(args)
            .current_dir(dir)
            .env("NOTIFY_SOCKET", &socket_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true);
        // The test's own settings (LOCSVC_TEST_*, which locsvc would refuse
        // as unknown) are not the service's.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("LOCSVC_") || k.starts_with("PROXY_SHIM_") {
                cmd.env_remove(k.as_ref());
            }
        }
        for (k, v) in env {
            cmd.env(k.as_ref(), v.as_ref());
        }
        let mut child = cmd.spawn().expect("the binary starts");
        let mut buf = vec![0u8; 4096];
        let status = loop {
            tokio::select! {
                got = tokio::time::timeout(within, socket.recv(&mut buf)) => {
                    let n = got
                        .unwrap_or_else(|_| panic!("{name} not ready within {within:?}: {}", tail(&stderr)))
                        .expect("read the notify socket");
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if msg.lines().any(|l| l == "READY=1") {
                        break msg
                            .lines()
                            .find_map(|l| l.strip_prefix("STATUS="))
                            .unwrap_or_default()
                            .to_string();
                    }
                }
                exited = child.wait() => {
                    panic!("{name} exited before it was ready ({exited:?}): {}", tail(&stderr));
                }
            }
        };
        Self {
            name: name.to_string(),
            child,
            status,
            stderr,
        }
    }

    /// The address in its READY status ("serving gRPC on 127.0.0.1:4711").
    pub fn bound_addr(&self) -> SocketAddr {
        self.status
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no address in {}'s status {:?}", self.name, self.status))
    }

    /// What it wrote to stderr so far (its log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends it `signal` (`TERM`, `HUP`, ...); it must still be running.
    pub fn signal(&self, signal: &str) {
        let pid = self
            .child
            .id()
            .unwrap_or_else(|| panic!("{} has exited: {}", self.name, tail(&self.stderr)))
            .to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIG{signal} to {}", self.name);
    }

    /// Sends SIGTERM and waits (at most `within`) for it to exit.
    pub async fn stop(mut self, within: Duration) -> ExitStatus {
        self.signal("TERM");
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} still running {within:?} after SIGTERM: {}",
                    self.name,
                    tail(&self.stderr)
                )
            })
            .expect("wait for the process")
    }
}

/// The last lines of a log file, for a failure message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
