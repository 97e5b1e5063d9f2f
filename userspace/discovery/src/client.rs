//! The Kubernetes API client: credentials (a kubeconfig file named in the config, else the
//! in-cluster service account, else `$KUBECONFIG`) and a connector whose sockets carry weir's
//! `own_mark`, so the eBPF programs never steer weir's own API connections (the API server's
//! ClusterIP, `default/kubernetes`, is not steered either). Must not: read anything but the
//! credentials.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use kube::client::ConfigExt as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::Error;

/// Loads the client config: `kubeconfig` when given, else in-cluster, else `$KUBECONFIG` (or
/// `~/.kube/config`).
pub async fn load_config(kubeconfig: Option<&Path>) -> Result<kube::Config, Error> {
    if let Some(path) = kubeconfig {
        let file = Kubeconfig::read_from(path)
            .map_err(|e| Error::Credentials(format!("reading the kubeconfig {}: {e}", path.display())))?;
        return kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Credentials(format!("the kubeconfig {}: {e}", path.display())));
    }
    match kube::Config::incluster() {
        Ok(c) => Ok(c),
        Err(in_cluster) => kube::Config::from_kubeconfig(&KubeConfigOptions::default()).await.map_err(|e| {
            Error::Credentials(format!(
                "no in-cluster service account ({in_cluster}) and no usable $KUBECONFIG ({e}); set [kubernetes] kubeconfig"
            ))
        }),
    }
}

/// A client for `config` whose sockets are marked with `mark` (when set).
pub fn client(config: kube::Config, mark: Option<u32>) -> Result<kube::Client, Error> {
    use tower::ServiceBuilder;
    let default_ns = config.default_namespace.clone();
    let https = config.rustls_https_connector_with_connector(MarkedConnector { mark }).map_err(Error::Client)?;
    let http: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(Error::Client)?)
        .layer(config.extra_headers_layer().map_err(Error::Client)?)
        .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
        .service(http);
    Ok(kube::Client::new(service, default_ns))
}

/// Connects plain TCP sockets, marked with `SO_MARK` before the connect.
#[derive(Debug, Clone, Copy)]
pub struct MarkedConnector {
    mark: Option<u32>,
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<tokio::net::TcpStream>, std::io::Error>> + Send>>;

impl tower::Service<Uri> for MarkedConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mark = self.mark;
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| std::io::Error::other(format!("{uri}: no host")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
            let mut last = std::io::Error::other(format!("{host}: no address"));
            for addr in tokio::net::lookup_host((host.as_str(), port)).await? {
                match connect(addr, mark).await {
                    Ok(s) => return Ok(TokioIo::new(s)),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
    }
}

async fn connect(addr: SocketAddr, mark: Option<u32>) -> std::io::Result<tokio::net::TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    if let Some(mark) = mark {
        socket.set_mark(mark).map_err(|e| std::io::Error::new(e.kind(), format!("SO_MARK {mark:#x}: {e}")))?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_keepalive(true)?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    socket.connect(addr).await
}
