//! The mTLS handshake on a loop's socket, through rustls' unbuffered API: the one from which
//! rustls hands the record layer over once the handshake is done (`tls::session`), so that
//! the relay encrypts and decrypts in its own buffers.
//!
//! The buffers here live for the handshake only. A peer's first records often arrive with
//! its last handshake message; rustls decrypts those it has whole (their plaintext is kept
//! for the relay to deliver first), and the bytes read past them go to the relay as they are.

use std::io::{self, IoSlice};
use std::net::TcpStream;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, UnbufferedStatus};
use rustls::ExtractedSecrets;
use smol::io::AsyncReadExt;

use super::reactor::Async;
use crate::tls::record::broken;
use crate::tls::session::{Session, Tickets};

/// The most handshake bytes held at once: a certificate chain of several KiB fits many
/// times over; a peer sending more is not a peer sidegate talks to.
const MAX_INCOMING: usize = 96 * 1024;
/// How much one read may take during the handshake.
const CHUNK: usize = 16 * 1024;

/// A connection whose handshake is done, with what came in behind it.
pub struct Established<D> {
    pub session: Session<D>,
    /// Records that came with the handshake, decrypted by rustls: delivered first.
    pub plaintext: Vec<u8>,
    /// Bytes read past those: the start of the peer's next record.
    pub ciphertext: Vec<u8>,
    /// The peer's leaf certificate, kept for the side that authorizes its peer (inbound).
    pub peer_leaf: Option<CertificateDer<'static>>,
    /// The peer's close_notify came with the handshake: it has finished sending.
    pub peer_finished: bool,
}

/// rustls' client and server unbuffered connections, as the handshake drives them.
pub trait Unbuffered {
    type Data;
    /// Whether the peer's leaf is kept for authorization once the handshake is done.
    const KEEPS_PEER: bool;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn handshaking(&self) -> bool;
    fn peer_leaf(&self) -> Option<CertificateDer<'static>>;
    #[allow(clippy::type_complexity)]
    fn into_kernel(self)
        -> Result<(ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error>;
}

macro_rules! unbuffered {
    ($conn:ty, $data:ty, $keeps:expr) => {
        impl Unbuffered for $conn {
            type Data = $data;
            const KEEPS_PEER: bool = $keeps;
            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, $data> {
                self.process_tls_records(incoming)
            }
            fn handshaking(&self) -> bool {
                self.is_handshaking()
            }
            fn peer_leaf(&self) -> Option<CertificateDer<'static>> {
                self.peer_certificates()?.first().cloned()
            }
            fn into_kernel(
                self,
            ) -> Result<(ExtractedSecrets, KernelConnection<$data>), rustls::Error> {
                self.dangerous_into_kernel_connection()
            }
        }
    };
}

unbuffered!(UnbufferedClientConnection, ClientConnectionData, false);
unbuffered!(UnbufferedServerConnection, ServerConnectionData, true);

/// rustls' error inside an `io::Error`, as `metrics::handshake` reads it.
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Runs the handshake of `conn` on `socket`. On a TLS error, the alert rustls prepared is
/// sent (if the socket takes it at once) before the error is returned.
pub async fn handshake<C>(
    mut conn: C,
    socket: &Async<TcpStream>,
) -> io::Result<Established<C::Data>>
where
    C: Unbuffered,
    KernelConnection<C::Data>: Tickets,
{
    let mut incoming = Vec::new();
    let mut outgoing = Vec::new();
    let mut plaintext = Vec::new();
    let peer_finished = match drive(
        &mut conn,
        socket,
        &mut incoming,
        &mut outgoing,
        &mut plaintext,
    )
    .await
    {
        Ok(finished) => finished,
        Err(e) => {
            if e.kind() == io::ErrorKind::InvalidData {
                send_alert(&mut conn, socket, &mut incoming, &mut outgoing);
            }
            return Err(e);
        }
    };
    let peer_leaf = if C::KEEPS_PEER {
        conn.peer_leaf()
    } else {
        None
    };
    let (secrets, kernel) = conn.into_kernel().map_err(tls_error)?;
    Ok(Established {
        session: Session::new(secrets, kernel)?,
        plaintext,
        ciphertext: incoming,
        peer_leaf,
        peer_finished,
    })
}

/// Exchanges handshake records until rustls may send application data and is no longer
/// handshaking (a TLS 1.3 server may send before the client's Finished). True when the
/// peer's close_notify came too: a client may send its request and finish with its Finished.
async fn drive<C: Unbuffered>(
    conn: &mut C,
    socket: &Async<TcpStream>,
    incoming: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
    plaintext: &mut Vec<u8>,
) -> io::Result<bool> {
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process(incoming);
        // rustls is waiting for the peer (otherwise it has more to do first).
        let mut blocked = false;
        let mut traffic = false;
        let mut finished = false;
        let state = state.map_err(tls_error);
        let step = match state {
            Err(e) => Err(e),
            Ok(ConnectionState::EncodeTlsData(mut data)) => encode(&mut data, outgoing),
            Ok(ConnectionState::TransmitTlsData(data)) => {
                let sent = socket.send_all(&mut [IoSlice::new(outgoing)]).await;
                outgoing.clear();
                data.done();
                sent
            }
            Ok(ConnectionState::BlockedHandshake) => {
                blocked = true;
                Ok(())
            }
            Ok(ConnectionState::WriteTraffic(_)) => {
                traffic = true;
                Ok(())
            }
            Ok(ConnectionState::PeerClosed) => {
                finished = true;
                Ok(())
            }
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                let mut read = Ok(());
                while let Some(record) = records.next_record() {
                    let record = match record {
                        Ok(record) => record,
                        Err(e) => {
                            read = Err(tls_error(e));
                            break;
                        }
                    };
                    discard += record.discard;
                    if plaintext.len() + record.payload.len() > MAX_INCOMING {
                        read = Err(broken("more data during the handshake than is held"));
                        break;
                    }
                    plaintext.extend_from_slice(record.payload);
                }
                read
            }
            Ok(_) => Err(broken(
                "the peer closed or sent early data during the handshake",
            )),
        };
        // Before anything else, errors included: rustls keeps its place in `incoming`, which
        // must stay as rustls left it (`send_alert` hands it back).
        incoming.drain(..discard);
        step?;
        if (traffic || finished) && !conn.handshaking() {
            return Ok(finished);
        }
        if finished {
            return Err(broken("the peer closed during the handshake"));
        }
        if blocked || traffic {
            read_more(socket, incoming).await?;
        }
    }
}

/// Appends the handshake record rustls has ready to `out`.
fn encode<D>(data: &mut EncodeTlsData<'_, D>, out: &mut Vec<u8>) -> io::Result<()> {
    let at = out.len();
    let mut room = 4096;
    loop {
        out.resize(at + room, 0);
        match data.encode(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(need)) if need.required_size > room => {
                room = need.required_size;
            }
            Err(_) => {
                out.truncate(at);
                return Err(io::Error::other(
                    "rustls could not encode a handshake record",
                ));
            }
        }
    }
}

/// Reads what the peer sent next onto the end of `incoming`.
async fn read_more(socket: &Async<TcpStream>, incoming: &mut Vec<u8>) -> io::Result<()> {
    let at = incoming.len();
    if at >= MAX_INCOMING {
        return Err(broken("a handshake longer than sidegate accepts"));
    }
    incoming.resize(at + CHUNK.min(MAX_INCOMING - at), 0);
    let mut s = socket;
    let read = s.read(&mut incoming[at..]).await;
    let n = *read.as_ref().unwrap_or(&0);
    incoming.truncate(at + n);
    match read? {
        0 => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the connection during the handshake",
        )),
        _ => Ok(()),
    }
}

/// After a TLS error, sends the alert rustls queued, as far as the socket takes it at once:
/// the peer learns why (a refused certificate, say) rather than seeing a bare close. rustls
/// hands queued records out before it looks at `incoming` again, so one call gets the alert;
/// a second would process the failed bytes again.
fn send_alert<C: Unbuffered>(
    conn: &mut C,
    socket: &Async<TcpStream>,
    incoming: &mut [u8],
    outgoing: &mut Vec<u8>,
) {
    outgoing.clear();
    let status = conn.process(incoming);
    if let Ok(ConnectionState::EncodeTlsData(mut data)) = status.state {
        if encode(&mut data, outgoing).is_ok() {
            use std::io::Write;
            let _ = socket.get_ref().write(outgoing);
        }
    }
}
