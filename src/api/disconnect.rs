//! Noticing that the client of a non-streamed request has gone.
//!
//! actix-web keeps running a handler after its client disconnects (it only
//! finds out when it writes the response), so a long non-streamed generation
//! would run to the end for nobody. The socket is remembered per connection
//! and peeked while the handler waits: a read of 0 bytes means the peer closed.

use std::any::Any;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use actix_web::HttpRequest;
use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;

/// How often a waiting handler checks its client.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
pub struct PeerSocket(RawFd);

/// `HttpServer::on_connect` hook: records the connection's socket.
pub fn remember_socket(connection: &dyn Any, extensions: &mut Extensions) {
    if let Some(stream) = connection.downcast_ref::<TcpStream>() {
        extensions.insert(PeerSocket(stream.as_raw_fd()));
    }
}

impl PeerSocket {
    pub fn of(request: &HttpRequest) -> Option<PeerSocket> {
        request.conn_data::<PeerSocket>().copied()
    }

    /// An owned handle on the same socket (its own descriptor), so it can be
    /// shut down from another task without racing the server's close.
    pub fn duplicate(self) -> Option<socket2::Socket> {
        // SAFETY: as in `peer_closed`: the descriptor is open while the
        // request's handler runs, which is when this is called.
        let socket = unsafe { BorrowedFd::borrow_raw(self.0) };
        socket.try_clone_to_owned().ok().map(socket2::Socket::from)
    }

    fn peer_closed(self) -> bool {
        // SAFETY: the descriptor belongs to the connection that is running this
        // request; actix closes it only after dropping the request's handler,
        // so it stays open for as long as a handler can call this.
        let socket = unsafe { BorrowedFd::borrow_raw(self.0) };
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // The socket is non-blocking: no data yet is `WouldBlock`, not a wait.
        match socket2::SockRef::from(&socket).peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

/// Resolves once the client has closed its connection; never without a socket.
pub async fn client_gone(peer: Option<PeerSocket>) {
    let Some(peer) = peer else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        if peer.peer_closed() {
            return;
        }
    }
}
