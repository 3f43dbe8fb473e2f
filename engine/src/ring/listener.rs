//! The per-worker listening socket.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};

/// Listen backlog requested, in connections; the kernel caps it at
/// `net.core.somaxconn`. Connections wait here while a worker's fixed-file
/// table is full.
pub const BACKLOG: i32 = 65535;

/// Binds a listener with SO_REUSEADDR and SO_REUSEPORT, so that every worker
/// binds the same address and the kernel spreads new connections over them.
/// TCP_NODELAY is set on the listener and inherited by accepted sockets:
/// frames are written whole, so Nagle only adds latency.
///
/// # Errors
/// `socket(2)`, `setsockopt(2)`, `bind(2)` or `listen(2)` errors, e.g.
/// `EADDRINUSE` when another process (without SO_REUSEPORT) holds the port;
/// the message names `addr`.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listen = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        Ok(socket.into())
    };
    listen().map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
