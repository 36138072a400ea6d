//! The stream a backend connection reads and writes, plain or TLS (the
//! client configuration is built by validation, with [`crate::tls`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

/// A backend connection's transport: plain (`Left`) or TLS (`Right`;
/// boxed, the TLS state is large and most backends are plain).
/// tokio-util's `Either` reads and writes through to whichever it holds.
pub type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Whether a connection that sat idle is still usable: nothing may have
/// arrived on it, not even the backend's close. Asks the reactor first,
/// so a quiet socket costs no system call.
pub fn is_usable(stream: &mut Stream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream {
        Either::Left(io) => match io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                // Readiness can be left over from the last read; only the
                // socket knows.
                let mut probe = [0u8; 1];
                matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        },
        // Records may have come that carry no data (a TLS 1.3 session
        // ticket): read through TLS, without waiting. Usable only if that
        // finds nothing to hand on and no close.
        Either::Right(io) => {
            let mut probe = [0u8; 1];
            let mut buf = ReadBuf::new(&mut probe);
            Pin::new(&mut **io)
                .poll_read(&mut cx, &mut buf)
                .is_pending()
        }
    }
}
