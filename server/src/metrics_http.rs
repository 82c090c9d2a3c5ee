//! The `/metrics` endpoint: a minimal HTTP/1.1 responder on its own std thread and port.
//!
//! Hand-written on purpose: it answers one GET, a few times a minute, to Prometheus or
//! curl. An HTTP library would bring a second async runtime (hyper runs on tokio) into
//! a broker built on compio, for a page that fits in a few lines. The bounds: one
//! connection at a time, a request head of at most `REQUEST_HEAD_BYTES_MAX`, read and
//! write timeouts, `Connection: close`. It never touches a core: the page is rendered
//! from atomics on this thread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::runtime::shard::BrokerShared;

/// Largest request head read; a scrape's is a few hundred bytes.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The content type of `prometheus-client`'s text encoding.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves scrapes until shutdown (`RunningBroker::shutdown` connects once to wake it).
pub fn serve(listener: TcpListener, shared: Arc<BrokerShared>) {
    for conn in listener.incoming() {
        if shared.stopping() {
            return;
        }
        match conn {
            Ok(stream) => {
                if let Err(e) = answer(stream, &shared.metrics) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn answer(mut stream: TcpStream, metrics: &Arc<Metrics>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= REQUEST_HEAD_BYTES_MAX {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => respond(&mut stream, "200 OK", CONTENT_TYPE, &metrics.render()),
        (b"GET", _) => respond(&mut stream, "404 Not Found", "text/plain", "try /metrics\n"),
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", ""),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
