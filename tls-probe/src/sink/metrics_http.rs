//! The `/metrics` endpoint: serves the exposition the [`super::metrics::MetricsSink`]
//! publishes each tick. It runs as a task on the session's runtime and reads nothing but the
//! published text, so the session stays the only owner of its state.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use super::metrics::CONTENT_TYPE;

/// Binds the endpoint's address, before anything is attached, so a port in use costs nothing.
pub fn bind(addr: &str) -> Result<std::net::TcpListener> {
    let parsed: SocketAddr = addr
        .parse()
        .with_context(|| format!("--metrics-addr {addr}: expected IP:PORT, e.g. 127.0.0.1:9464"))?;
    let listener = std::net::TcpListener::bind(parsed).with_context(|| {
        format!("cannot listen on {parsed} for --metrics-addr; is another program using the port?")
    })?;
    listener
        .set_nonblocking(true)
        .context("setting the metrics listener non-blocking")?;
    if let Some(warning) = exposure_warning(parsed) {
        eprintln!("tls-probe: warning: {warning}");
    }
    Ok(listener)
}

/// What to tell the user when the endpoint is reachable from other hosts: it has no
/// authentication, and it names the traced processes and their peers.
fn exposure_warning(addr: SocketAddr) -> Option<String> {
    (!addr.ip().is_loopback()).then(|| {
        format!(
            "--metrics-addr {addr} is not a loopback address: anyone who can reach it can read \
             /metrics (no authentication), which names the traced processes and the hosts \
             they talk to; prefer 127.0.0.1:PORT behind your Prometheus, or firewall the port"
        )
    })
}

/// Serves `GET /metrics` from `metrics` until the runtime stops. Call inside the runtime.
pub fn spawn(
    listener: std::net::TcpListener,
    metrics: watch::Receiver<String>,
) -> Result<JoinHandle<()>> {
    let listener = TcpListener::from_std(listener).context("registering the metrics listener")?;
    Ok(tokio::spawn(serve(listener, metrics)))
}

async fn serve(listener: TcpListener, metrics: watch::Receiver<String>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of fds: keep serving once some are back.
                log::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&req, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                log::debug!("metrics endpoint: connection: {e}");
            }
        });
    }
}

fn respond<B>(req: &Request<B>, metrics: &watch::Receiver<String>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, CONTENT_TYPE, metrics.borrow().clone())
        }
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "tls-probe serves /metrics\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn only_a_non_loopback_address_is_warned_about() {
        for quiet in ["127.0.0.1:9464", "[::1]:9464", "127.0.0.2:1"] {
            assert_eq!(exposure_warning(quiet.parse().unwrap()), None, "{quiet}");
        }
        for open in ["0.0.0.0:9464", "[::]:9464", "10.1.2.3:9464"] {
            let w = exposure_warning(open.parse().unwrap()).unwrap_or_default();
            assert!(
                w.contains("no authentication") && w.contains(open),
                "{open}: {w}"
            );
        }
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_what_was_published_and_404_elsewhere() {
        let listener = bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel("first\n".to_owned());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            spawn(listener, rx).unwrap();
            let r = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
                .await
                .unwrap();
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            assert!(r.contains("text/plain; version=0.0.4"), "{r}");
            assert!(r.ends_with("\r\n\r\nfirst\n"), "{r}");
            tx.send_replace("second\n".to_owned());
            let r = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
                .await
                .unwrap();
            assert!(r.ends_with("second\n"), "{r}");
            let r = tokio::task::spawn_blocking(move || get(addr, "/"))
                .await
                .unwrap();
            assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        });
    }

    #[test]
    fn bad_address_is_a_clear_error() {
        let err = bind("localhost").unwrap_err();
        assert!(format!("{err:#}").contains("expected IP:PORT"), "{err:#}");
    }
}
