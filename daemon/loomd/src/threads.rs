//! Threads in loomd: the agent in a weaver posts its events to `/loom/v1/threads/events` on
//! that weaver's own proxy listener, so the sender is authenticated by the channel itself;
//! operators list, show and search them.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::{Request, Response, StatusCode};
use loom_proxy::{BoxFuture, LocalRoutes};
use loom_threads::{EVENTS_PATH, ThreadsError};
use rusqlite::Connection;

#[derive(Debug)]
pub struct Threads {
    conn: Arc<Mutex<Connection>>,
}

impl Threads {
    pub fn open(db: &Path) -> Result<Threads, ThreadsError> {
        let mut conn =
            Connection::open(db).map_err(|source| ThreadsError::Sqlite { op: "opening the thread store", source })?;
        loom_threads::configure_connection(&conn)?;
        loom_threads::migrate(&mut conn)?;
        Ok(Threads { conn: Arc::new(Mutex::new(conn)) })
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Connection) -> R) -> R {
        f(&mut self.conn.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: String) -> Response<Bytes> {
    json(status, serde_json::json!({ "error": { "code": status.as_u16(), "message": message } }))
}

impl LocalRoutes for Threads {
    /// The proxy refuses a bigger batch while it streams in, so none is ever held whole.
    fn max_body_bytes(&self) -> usize {
        loom_threads::wire::MAX_BATCH_BYTES
    }

    fn handle(&self, weaver_id: String, request: Request<Bytes>) -> BoxFuture<'static, Response<Bytes>> {
        let conn = self.conn.clone();
        Box::pin(async move {
            if request.method() != hyper::Method::POST || request.uri().path() != EVENTS_PATH {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no loom endpoint {} {}", request.method(), request.uri().path()),
                );
            }
            let body = request.into_body();
            let result = tokio::task::spawn_blocking(move || {
                let batch = loom_threads::parse_batch(&body)?;
                let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                loom_threads::append_events(&mut conn, &weaver_id, &batch.events)
            })
            .await;
            match result {
                Ok(Ok(resp)) => json(StatusCode::OK, serde_json::to_value(resp).unwrap_or_default()),
                Ok(Err(e @ ThreadsError::WrongOwner { .. })) => error(StatusCode::FORBIDDEN, e.to_string()),
                Ok(Err(e @ ThreadsError::Invalid(_))) => error(StatusCode::BAD_REQUEST, e.to_string()),
                Ok(Err(e)) => {
                    tracing::error!(error = %crate::error_chain(&e), "storing thread events failed");
                    error(StatusCode::INTERNAL_SERVER_ERROR, "the thread store failed; the agent will resend".into())
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        })
    }
}
