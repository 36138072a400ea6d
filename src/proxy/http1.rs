//! Plain HTTP/1.1 connections that shed their HTTP state while idle.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB head buffer for the whole
//! life of a connection, with no way to shrink them. A keep-alive
//! connection spends most of its life between requests, so once nothing has
//! been in flight for [`PARK_AFTER`], the connection is *parked*: hyper is
//! asked to stop after its current exchange without closing the socket,
//! gives back the socket and any bytes it read ahead, and the state is
//! dropped. Only the socket, the service and a few counters remain until
//! the client speaks again; then a fresh hyper connection starts on the
//! bytes read ahead. A busy connection is never parked, so the request path
//! does not pay for this.
//!
//! While a request is in flight hyper is told not to read (`half_close`):
//! its read would take a fresh buffer every request. The watchdog instead
//! peeks at the socket at each look (`client_closed`) and drops the
//! exchange when the client has gone.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::conn::{self, ConnState, Expired, MeteredIo, Timeouts};
use super::service::ProxyService;
use super::Connections;
use crate::table::Limits;

/// How long an HTTP/1.1 connection waits with nothing in flight before it
/// is parked. Long enough that a client sending back-to-back requests never
/// sees it; short enough that idle keep-alive connections hold ~1 KiB.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// What a connection keeps while parked, besides its socket.
pub struct Conn {
    pub peer: SocketAddr,
    pub service: ProxyService,
    pub state: Arc<ConnState>,
    pub limits: Limits,
    pub connections: Arc<Connections>,
}

/// Serves a plain-text HTTP/1.1 connection until it closes, parking it
/// whenever it idles.
pub async fn serve(stream: TcpStream, conn: Conn, mut shutdown: watch::Receiver<bool>) {
    let Conn {
        peer,
        service,
        state,
        limits,
        connections,
    } = conn;
    let mut io = MeteredIo::new(stream, state.clone());
    let mut ahead = Bytes::new();
    loop {
        // Boxed: the hyper connection and its buffers exist only here.
        let active = Box::pin(active(
            io,
            ahead,
            service.clone(),
            &state,
            limits,
            peer,
            &shutdown,
        ));
        (io, ahead) = match active.await {
            Some(parked) => parked,
            None => return,
        };
        if !ahead.is_empty() {
            continue;
        }
        let _parked = connections.park();
        // Parked: wait for the client's next bytes, its close, the idle
        // timeout or shutdown.
        let idle_left = Duration::from_millis(
            (state.last_activity_ms() + limits.idle_timeout.as_millis() as u64)
                .saturating_sub(conn::now_ms()),
        );
        let mut probe = [0u8; 1];
        let spoke = tokio::select! {
            r = tokio::time::timeout(idle_left, io.get_ref().peek(&mut probe)) => matches!(r, Ok(Ok(n)) if n > 0),
            _ = stopping(&mut shutdown) => false,
        };
        if !spoke {
            return;
        }
    }
}

/// Runs hyper on the connection until it ends (`None`) or is parked: then
/// the socket and the bytes hyper read beyond its last request come back.
async fn active(
    mut io: MeteredIo<TcpStream>,
    ahead: Bytes,
    service: ProxyService,
    state: &ConnState,
    limits: Limits,
    peer: SocketAddr,
    shutdown: &watch::Receiver<bool>,
) -> Option<(MeteredIo<TcpStream>, Bytes)> {
    io.rewind(ahead);
    let fd = io.get_ref().as_raw_fd();
    let mut conn = hyper::server::conn::http1::Builder::new()
        // The read buffer bounds the request head: a head that does not fit
        // gets 431. (hyper's floor for it is 8 KiB; validation enforces it.)
        .max_buf_size(limits.max_header_bytes)
        // Small responses go out in one copy-and-write rather than a
        // vectored write of head and body (measured faster on loopback).
        .writev(false)
        .keep_alive(true)
        // hyper otherwise reads the socket while a request is in flight, to
        // see the client close: with the request's head still holding its
        // read buffer, that read takes a fresh 8 KiB buffer every request.
        // The watchdog's
        // probe below sees a client that went away instead.
        .half_close(true)
        .serve_connection(
            TokioIo::new(io),
            hyper::service::service_fn(move |req| hyper::service::Service::call(&service, req)),
        );
    let timeouts = Timeouts {
        header_read: limits.header_read_timeout,
        idle: limits.idle_timeout,
        park: Some(PARK_AFTER),
        probe_client: true,
    };
    let mut parking = false;
    let mut closing: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let grace = limits.header_read_timeout.max(Duration::from_secs(1));
    let mut watchdog = conn::Watchdog::new(state, timeouts).draining(shutdown);
    let ended = loop {
        tokio::select! {
            biased;
            result = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break result,
            why = &mut watchdog, if closing.is_none() && !parking => {
                match why {
                    Expired::HeaderRead => {
                        tracing::debug!(%peer, "client did not send its request headers in time");
                        return None;
                    }
                    Expired::Idle => {
                        closing = Some(Box::pin(tokio::time::sleep(grace)));
                        Pin::new(&mut conn).graceful_shutdown();
                    }
                    Expired::Drain => {
                        closing = Some(Box::pin(tokio::time::sleep(limits.drain_timeout)));
                        Pin::new(&mut conn).graceful_shutdown();
                    }
                    Expired::Probe => {
                        if client_closed(fd) {
                            // As nginx does (unless told to ignore client
                            // aborts): the exchange is dropped, and with it
                            // the backend connection it was using.
                            tracing::debug!(%peer, "client closed its connection while its request was in flight");
                            return None;
                        }
                    }
                    Expired::Park => {
                        // Nothing in flight and no body unread: hyper stops
                        // at once (or after flushing its last bytes) without
                        // touching the socket. A client that never reads
                        // those bytes is cut off after the idle timeout.
                        parking = true;
                        tracing::trace!(%peer, "parking");
                        closing = Some(Box::pin(tokio::time::sleep(limits.idle_timeout)));
                        Pin::new(&mut conn).graceful_shutdown();
                    }
                }
            }
            _ = async { closing.as_mut().expect("guarded").await }, if closing.is_some() => {
                tracing::debug!(%peer, "connection did not close in time after a graceful close");
                return None;
            }
        }
    };
    if let Err(e) = ended {
        tracing::trace!(%peer, error = %e, "connection ended with an error");
        return None;
    }
    let parts = conn.into_parts();
    let mut io = parts.io.into_inner();
    if parking && !io.has_ahead() {
        state.drop_timers();
        crate::memory::freed(crate::memory::PARKED_CONNECTION_BYTES);
        tracing::trace!(%peer, "parked");
        // The bytes read ahead (rarely any) still hold hyper's whole read
        // buffer: keep a copy, free the buffer.
        return Some((io, Bytes::copy_from_slice(&parts.read_buf)));
    }
    // hyper ended the connection itself (the client asked to close,
    // HTTP/1.0, a body left unread): close the socket.
    let _ = tokio::time::timeout(grace, io.shutdown()).await;
    None
}

/// Whether the client has closed (or reset) its connection, seen without
/// taking any byte it sent: a peek at the socket, which does not block.
/// Bytes waiting (a pipelined request) say nothing either way; the client
/// counts as there.
#[allow(unsafe_code)]
fn client_closed(fd: RawFd) -> bool {
    // SAFETY: `fd` is the socket of the connection `active` serves; the
    // hyper connection owning it lives until `active` returns, and the
    // watchdog that asks for this probe runs inside `active`.
    let socket = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut probe = [std::mem::MaybeUninit::uninit(); 1];
    match socket2::SockRef::from(&socket).peek(&mut probe) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ),
    }
}

/// Resolves once shutdown has begun.
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
