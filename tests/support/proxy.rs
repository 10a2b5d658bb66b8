//! A TCP forwarder on the loopback that a test can cut: every connection through it is closed
//! and new ones are refused, as when a node loses its network to the API server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A running forwarder.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    cut: CancellationToken,
    open: Arc<AtomicBool>,
}

impl Proxy {
    /// Forwards connections to `target` until cut.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = CancellationToken::new();
        let open = Arc::new(AtomicBool::new(true));
        let (cut_all, is_open) = (cut.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !is_open.load(Ordering::Acquire) {
                    drop(client); // refused
                    continue;
                }
                let cut = cut_all.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        Proxy { addr, cut, open }
    }

    /// Closes every connection and refuses new ones from now on.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        self.cut.cancel();
    }
}

/// A copy of `kubeconfig` whose server is reached through `proxy` (the TLS server name stays).
pub fn kubeconfig_through(
    kubeconfig: &std::path::Path,
    proxy: &Proxy,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_string();
    let url = url::Url::parse(&server).unwrap();
    assert!(
        config["clusters"][0]["cluster"]["tls-server-name"]
            .as_str()
            .is_some(),
        "the kubeconfig names the TLS server"
    );
    config["clusters"][0]["cluster"]["server"] = format!("{}://{}", url.scheme(), proxy.addr).into();
    let path = dir.join("kubeconfig-through-proxy");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// The address of the API server in `kubeconfig`.
pub fn api_server_addr(kubeconfig: &std::path::Path) -> SocketAddr {
    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let url = url::Url::parse(config["clusters"][0]["cluster"]["server"].as_str().unwrap()).unwrap();
    url.socket_addrs(|| None).unwrap()[0]
}
