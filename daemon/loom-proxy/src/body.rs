//! Response bodies: small complete ones, and upstream bodies passed on frame by frame while a
//! scanner reads their usage; the request's accounting closes when the body ends or is dropped.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use tokio::time::{Duration, Instant, Sleep};

use crate::call::Call;
use crate::config::ApiFamily;
use crate::errors::stream_error_event;
use crate::usage::{UsageScanner, UsageStatus};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response the proxy sends.
#[derive(Debug)]
pub enum ProxyBody {
    Full(Option<Bytes>),
    Metered(Box<MeteredBody>),
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        Self::Full(Some(b.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Metered(m) => Pin::new(&mut **m).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Metered(m) => m.done && m.pending.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Metered(m) if m.scanner.is_sse() => SizeHint::default(),
            Self::Metered(m) => m.inner.size_hint(),
        }
    }
}

/// An upstream body on its way to the client.
#[derive(Debug)]
pub struct MeteredBody {
    inner: Incoming,
    scanner: UsageScanner,
    call: Option<Call>,
    shape: ApiFamily,
    pending: Option<Bytes>,
    done: bool,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
}

impl MeteredBody {
    pub fn new(inner: Incoming, content_type: &str, call: Call, shape: ApiFamily, idle_timeout: Duration) -> Self {
        Self {
            inner,
            scanner: UsageScanner::new(content_type),
            call: Some(call),
            shape,
            pending: None,
            done: false,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
        }
    }

    fn close(&mut self, status: UsageStatus, usage: Option<crate::usage::Usage>) {
        if let Some(mut call) = self.call.take() {
            call.finish(status, usage);
        }
    }

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(b) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let polled = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                ready!(this.idle.as_mut().poll(cx));
                // The upstream went silent: end the response as if it had been cut, so the
                // weaver's slot is not held forever.
                let reason =
                    format!("upstream sent nothing for {:?} ([proxy] stream_idle_timeout_ms)", this.idle_timeout);
                return this.fail(reason, None);
            }
        };
        match polled {
            Some(Ok(frame)) => {
                this.idle.as_mut().reset(Instant::now() + this.idle_timeout);
                if let Some(d) = frame.data_ref() {
                    this.scanner.feed(d);
                }
                // A body of known length is not polled again once it is all there.
                if this.inner.is_end_stream() {
                    this.pending = this.complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                let reason = format!("upstream stream broke after the response started: {e}");
                this.fail(reason, Some(Box::new(e)))
            }
            None => match this.complete() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Ready(None),
            },
        }
    }

    /// The upstream broke or went silent: settle the call as failed and end the response with
    /// an error event (streams) or a broken connection (anything else).
    fn fail(&mut self, reason: String, err: Option<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        let outcome = self.scanner.finish();
        self.close(UsageStatus::Failed(reason.clone()), outcome.usage);
        if self.scanner.is_sse() {
            Poll::Ready(Some(Ok(Frame::data(stream_error_event(self.shape, &format!("loom proxy: {reason}"))))))
        } else {
            // Not a stream a client can read an error event from: break the connection so it
            // cannot take a truncated body for a whole one.
            Poll::Ready(Some(Err(err.unwrap_or_else(|| reason.into()))))
        }
    }

    /// The upstream body ended: settle the call; returns an error event to send if the
    /// stream ended before its final event.
    fn complete(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        self.done = true;
        let outcome = self.scanner.finish();
        if outcome.cut {
            let reason = "upstream stream ended before its final event".to_string();
            self.close(UsageStatus::Failed(reason.clone()), outcome.usage);
            return Some(stream_error_event(self.shape, &format!("loom proxy: {reason}")));
        }
        let status = match outcome.upstream_error {
            Some(e) => UsageStatus::Failed(e),
            None => UsageStatus::Ok,
        };
        self.close(status, outcome.usage);
        None
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if self.call.is_some() && self.inner.is_end_stream() {
            self.complete();
        }
        if self.call.is_some() {
            let usage = self.scanner.usage_so_far();
            self.close(UsageStatus::ClientClosed, usage);
        }
    }
}
