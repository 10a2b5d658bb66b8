//! Runs the operator as its real binary, the way a Deployment does, and keeps what it logs.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The operator binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_workspace-assist");

/// A running operator process.
pub struct OperatorProcess {
    child: Child,
    logs: Arc<Mutex<String>>,
    /// The tasks reading its stdout and stderr: they end at end of file.
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// Its metrics and health address.
    pub metrics: std::net::SocketAddr,
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl OperatorProcess {
    /// Starts `workspace-assist run` with `args` against the cluster of `kubeconfig`.
    pub fn spawn(kubeconfig: &Path, args: &[&str]) -> OperatorProcess {
        let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(BIN);
        command
            .arg("run")
            .args(["--metrics-address", &metrics.to_string()])
            .args(args)
            .env("KUBECONFIG", kubeconfig);
        OperatorProcess::start(command, metrics)
    }

    /// Starts `command` (which runs the operator with its metrics and health on `metrics`),
    /// keeping what it logs.
    pub fn start(mut command: Command, metrics: std::net::SocketAddr) -> OperatorProcess {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the operator");
        let logs = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ] {
            let logs = logs.clone();
            let mut lines = BufReader::new(stream.unwrap()).lines();
            readers.push(tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut l = logs.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            }));
        }
        OperatorProcess {
            child,
            logs,
            readers,
            metrics,
        }
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    /// Sends a signal with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} {}", self.pid());
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("checking the operator process")
            .is_none()
    }

    /// Waits for it to exit, and for what it wrote last to be read: the process can be gone
    /// before its final log lines are.
    pub async fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("the operator exits in time")
            .unwrap();
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
        }
        status
    }

    /// GETs a path of its metrics/health server: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{path}", self.metrics))
            .await
            .expect("the metrics server answers");
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Waits until a GET of `path` answers `status`.
    pub async fn wait_http(&self, path: &str, status: u16, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(resp) = reqwest::get(format!("http://{}{path}", self.metrics)).await
                && resp.status().as_u16() == status
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} did not answer {status} within {timeout:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
