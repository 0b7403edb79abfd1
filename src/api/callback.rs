//! Posting a reply to the management node's `callbackurl`: retried every second on connection
//! errors for up to a minute; any HTTP answer ends it (404 means the node gave up).

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Uri};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

/// Where to post the reply.
#[derive(Debug, Clone)]
pub struct CallbackTarget {
    uri: Uri,
    authority: String,
    host: String,
    port: u16,
}

impl CallbackTarget {
    /// Parses a `callbackurl` header: `http://host[:port]/path`.
    pub fn parse(url: &str) -> Result<CallbackTarget, String> {
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|e| format!("callbackurl {url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("callbackurl {url:?} is not an http:// URL"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("callbackurl {url:?} has no host"))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(80);
        Ok(CallbackTarget {
            authority: authority.to_string(),
            uri,
            host,
            port,
        })
    }
}

/// How a callback ended.
#[derive(Debug)]
pub enum Delivery {
    /// The node answered with this status.
    Answered(u16),
    /// No connection could be made (or kept) within the retry window.
    GaveUp(String),
}

/// Posts `body` with the `taskuuid` header, retrying connection errors until `retry_for`.
pub async fn post(
    target: &CallbackTarget,
    task_uuid: &str,
    body: Vec<u8>,
    retry_for: Duration,
) -> Delivery {
    let deadline = Instant::now() + retry_for;
    let body = Bytes::from(body);
    loop {
        match try_once(target, task_uuid, body.clone()).await {
            Ok(status) => return Delivery::Answered(status),
            Err(e) => {
                if Instant::now() + Duration::from_secs(1) > deadline {
                    return Delivery::GaveUp(e);
                }
                tracing::debug!(error = %e, "callback failed, retrying in 1 s");
                sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn try_once(target: &CallbackTarget, task_uuid: &str, body: Bytes) -> Result<u16, String> {
    let stream = timeout(
        Duration::from_secs(10),
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let path = target
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let req = Request::post(path)
        .header(hyper::header::HOST, &target.authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::CONTENT_LENGTH, body.len())
        .header(hyper::header::CONNECTION, "close")
        .header("taskuuid", task_uuid)
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let result = timeout(Duration::from_secs(120), sender.send_request(req)).await;
    conn.abort();
    match result {
        Err(_) => Err("no answer within 120 s".into()),
        Ok(Err(e)) => Err(format!("send: {e}")),
        Ok(Ok(resp)) => Ok(resp.status().as_u16()),
    }
}
