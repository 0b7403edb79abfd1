//! A test client that behaves like the management node: it posts commands with `taskuuid` and
//! `callbackurl`, runs the callback receiver, and returns the parsed reply.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// The fake management node.
pub struct MgmtNode {
    client: reqwest::Client,
    /// Where callbacks are received.
    pub callback_url: String,
    waiters: Waiters,
    /// Callbacks that arrived for no waiting task (count).
    pub strays: Arc<Mutex<Vec<(String, Value)>>>,
}

/// A raw HTTP answer.
pub struct Raw {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Raw {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

fn new_uuid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:016x}{:016x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

impl MgmtNode {
    /// Starts the callback receiver on 127.0.0.1 (inside the current namespace).
    pub async fn start() -> MgmtNode {
        Self::start_at("127.0.0.1").await
    }

    /// Starts the callback receiver on `ip` (an address of the current namespace).
    pub async fn start_at(ip: &str) -> MgmtNode {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind callback");
        let addr = listener.local_addr().expect("addr");
        let waiters: Waiters = Arc::default();
        let strays: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let (w, s) = (waiters.clone(), strays.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (w, s) = (w.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (w, s) = (w.clone(), s.clone());
                        async move {
                            let uuid = req
                                .headers()
                                .get("taskuuid")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let value: Value = body
                                .ok()
                                .and_then(|b| serde_json::from_slice(&b).ok())
                                .unwrap_or(Value::Null);
                            let waiter = w.lock().unwrap().remove(&uuid);
                            let status = match waiter {
                                Some(tx) => {
                                    let _ = tx.send(value);
                                    200
                                }
                                None => {
                                    s.lock().unwrap().push((uuid, value));
                                    404
                                }
                            };
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        MgmtNode {
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
            callback_url: format!("http://{addr}/zstack/asyncrest/callback"),
            waiters,
            strays,
        }
    }

    /// Sends `body` to `path` the way the management node does, returns once the agent acked
    /// it (the command is then queued), with the future reply.
    pub async fn send(
        &self,
        agent: SocketAddr,
        path: &str,
        body: &Value,
    ) -> oneshot::Receiver<Value> {
        let uuid = new_uuid();
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(uuid.clone(), tx);
        let ack = self
            .client
            .post(format!("http://{agent}{path}"))
            .header("Content-Type", "application/json; charset=utf-8")
            .header("taskuuid", &uuid)
            .header("callbackurl", &self.callback_url)
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert_eq!(ack.status().as_u16(), 200, "ack of {path}");
        rx
    }

    /// Sends `body` to `path` the way the management node does and waits for the callback.
    pub async fn call(&self, agent: SocketAddr, path: &str, body: &Value) -> Value {
        let reply = self.send(agent, path, body).await;
        tokio::time::timeout(Duration::from_secs(300), reply)
            .await
            .unwrap_or_else(|_| panic!("no callback for {path} within 300 s"))
            .expect("callback sender dropped")
    }

    /// Sends `body` to `path` with neither header and returns the synchronous reply.
    pub async fn call_sync(&self, agent: SocketAddr, path: &str, body: &Value) -> Value {
        let raw = self
            .post_raw(agent, path, &[], body.to_string().into_bytes())
            .await;
        assert_eq!(
            raw.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&raw.body)
        );
        raw.json()
    }

    /// A POST with exactly the given headers and body.
    pub async fn post_raw(
        &self,
        agent: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Raw {
        let mut req = self.client.post(format!("http://{agent}{path}")).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        Raw {
            status: resp.status().as_u16(),
            body: resp.bytes().await.expect("body").to_vec(),
        }
    }
}

/// Asserts a reply is a success, printing it otherwise.
pub fn assert_ok(reply: &Value) {
    assert_eq!(reply["success"], Value::Bool(true), "reply: {reply}");
    assert_eq!(
        reply["error"],
        Value::String(String::new()),
        "reply: {reply}"
    );
}

/// Asserts a reply is a failure whose error contains `needle`.
pub fn assert_fails(reply: &Value, needle: &str) {
    assert_eq!(reply["success"], Value::Bool(false), "reply: {reply}");
    let err = reply["error"].as_str().unwrap_or_default();
    assert!(err.contains(needle), "error {err:?} lacks {needle:?}");
}
