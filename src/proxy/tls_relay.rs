//! Relaying between a local plaintext socket (TCP or Unix) and an mTLS connection whose
//! handshake is done, keeping half-close: a local EOF becomes a TLS close_notify plus a TCP
//! write shutdown, and the peer's close_notify (or bare EOF, as some proxies send) a local
//! write shutdown.
//!
//! The socket I/O is ours, not a stream wrapper's. TLS bytes are read from the socket about
//! two records at a time, as much as fits straight into rustls' record buffer and the rest
//! into a pooled buffer (`Incoming`, `Records`); plaintext is written from rustls' own buffer straight to the
//! local socket; encrypted records leave in one vectored write. Like the plain relay, a
//! direction holds a pooled buffer only while bytes move, so an idle connection keeps only
//! rustls' state.
//!
//! rustls' unbuffered API (`rustls::unbuffered`) would not save copies with rustls 0.23: it
//! still copies each received record's plaintext out into a buffer it allocates, and encrypts
//! each record into one it allocates before copying it into the caller's buffer (a copy more
//! than `write_tls` needs). So this stays with the buffered API and avoids what copying is ours
//! to avoid: ciphertext staged in a buffer of ours on its way into rustls'.

use std::cell::RefCell;
use std::io::{self, BufRead, IoSliceMut, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use rustls::ConnectionCommon;
use smol::future;

use super::buffers::{Buf, BUF_SIZE};
use super::reactor::{Async, ShutdownWrite};
use super::relay::{step, Flow, Pace, Relayed, Step};
use crate::metrics::Tally;

/// rustls' connection state, borrowed by one direction at a time: both directions run in this
/// one task and no borrow is held across an await.
type Conn<'c, D> = RefCell<&'c mut ConnectionCommon<D>>;

/// Relays until both directions end, one fails, or the pair is idle for `idle`. `remote`
/// carries `tls`, whose handshake is complete.
pub async fn relay_tls<L, D>(
    local: &Async<L>,
    remote: &Async<TcpStream>,
    tls: &mut ConnectionCommon<D>,
    idle: Duration,
    to_tls: Tally<'_>,
    from_tls: Tally<'_>,
) -> io::Result<Relayed>
where
    L: ShutdownWrite,
    for<'a> &'a L: Read + Write,
{
    let tls = RefCell::new(tls);
    let flow = Flow::new();
    let up = local_to_tls(local, remote, &tls, to_tls, &flow);
    let down = tls_to_local(remote, local, &tls, from_tls, &flow);
    future::or(future::try_zip(up, down), flow.watchdog(idle)).await?;
    Ok(flow.relayed())
}

/// Plaintext from the local side, encrypted. Waits for the local socket without holding a
/// buffer; rustls holds the encrypted records until the socket takes them.
async fn local_to_tls<L, D>(
    local: &Async<L>,
    remote: &Async<TcpStream>,
    tls: &Conn<'_, D>,
    total: Tally<'_>,
    flow: &Flow,
) -> io::Result<()>
where
    L: AsFd,
    for<'a> &'a L: Read,
{
    let mut pace = Pace::default();
    loop {
        send_pending(remote, tls).await?;
        let read = {
            let mut buf = Buf::take();
            let read = step(local.get_ref().read(buf.as_mut()))?;
            if let Step::Moved(n) = read {
                // Flushed above, so rustls' output limit (64 KiB) takes a whole buffer.
                tls.borrow_mut().writer().write_all(&buf.as_mut()[..n])?;
                flow.moved(total, &flow.a_to_b, n);
            }
            read
        };
        if read == Step::Eof {
            tls.borrow_mut().send_close_notify();
            send_pending(remote, tls).await?;
            return remote.get_ref().shutdown(Shutdown::Write);
        }
        if read == Step::Wait {
            local.read_would_block();
        }
        pace.next(read == Step::Wait, local.readable()).await?;
    }
}

/// Writes every TLS byte rustls has queued (records, alerts, close_notify).
async fn send_pending<D>(remote: &Async<TcpStream>, tls: &Conn<'_, D>) -> io::Result<()> {
    loop {
        let sent = {
            let mut tls = tls.borrow_mut();
            if !tls.wants_write() {
                return Ok(());
            }
            tls.write_tls(&mut remote.get_ref())
        };
        match sent {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                remote.write_would_block();
                remote.writable().await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes what rustls has queued as far as the socket takes it now.
fn try_send<D>(remote: &Async<TcpStream>, tls: &Conn<'_, D>) -> io::Result<()> {
    let mut tls = tls.borrow_mut();
    while tls.wants_write() {
        match step(tls.write_tls(&mut remote.get_ref()))? {
            Step::Wait => {
                remote.write_would_block();
                break;
            }
            Step::Eof => break,
            Step::Moved(_) | Step::Again => {}
        }
    }
    Ok(())
}

/// TLS from the peer, decrypted to the local side.
async fn tls_to_local<L, D>(
    remote: &Async<TcpStream>,
    local: &Async<L>,
    tls: &Conn<'_, D>,
    total: Tally<'_>,
    flow: &Flow,
) -> io::Result<()>
where
    L: ShutdownWrite,
    for<'a> &'a L: Write,
{
    let mut pace = Pace::default();
    let mut from = Incoming::new(remote.get_ref());
    loop {
        // Whatever rustls already holds (from the handshake's last read, or below). Records
        // need delivering before rustls accepts more (it buffers 16 KiB of plaintext).
        if deliver(tls, local, total, flow).await? == Peer::Finished {
            return local.get_ref().shutdown_write();
        }
        let read = {
            let mut tls = tls.borrow_mut();
            let read = step(tls.read_tls(&mut from))?;
            if let Step::Moved(_) = read {
                tls.process_new_packets().map_err(io::Error::other)?;
            }
            read
        };
        match read {
            // A peer that closes TCP without close_notify has still finished sending; an
            // incomplete record it left is dropped.
            Step::Eof => return local.get_ref().shutdown_write(),
            // Alerts or key updates may need an answer: sent if the socket takes it now, else
            // by the other direction, which flushes before it reads. Waiting for the socket
            // here would tie this direction to the other's backlog: a peer that stops reading
            // until it can write would deadlock the pair.
            Step::Moved(_) => try_send(remote, tls)?,
            Step::Wait => remote.read_would_block(),
            Step::Again => {}
        }
        // Bytes already read from the socket are fed on without waiting or yielding.
        if !from.holds_bytes() {
            pace.next(read == Step::Wait, remote.readable()).await?;
        }
    }
}

/// The socket as rustls' `read_tls` sees it. rustls hands `read_tls` the free end of its
/// record buffer: 4 KiB at a time while it grows that buffer (after the handshake, and again
/// whenever it has emptied it), then room for about a whole record. One vectored read fills
/// that room and a pooled buffer behind it, so that the bytes landing in rustls' room are
/// copied by the kernel only, not once more by us. How much goes behind is steered by
/// `Records`; without it, up to 32 KiB in all per syscall (not rustls' 4 KiB). The pooled
/// buffer is held only while it has bytes rustls has not taken, so an idle connection holds
/// none.
struct Incoming<'s> {
    socket: &'s TcpStream,
    /// Read from the socket, not yet given to rustls: `spill[start..end]` (32 KiB at most,
    /// so offsets fit in 16 bits: every held connection keeps these).
    spill: Option<Buf>,
    start: u16,
    end: u16,
    records: Records,
}

impl<'s> Incoming<'s> {
    fn new(socket: &'s TcpStream) -> Self {
        Incoming {
            socket,
            spill: None,
            start: 0,
            end: 0,
            records: Records::default(),
        }
    }

    fn holds_bytes(&self) -> bool {
        self.spill.is_some()
    }

    /// Gives `out` what it takes of `spill[start..end]`, and the buffer back once empty.
    fn hand_over(&mut self, mut spill: Buf, out: &mut [u8]) -> usize {
        let (start, end) = (usize::from(self.start), usize::from(self.end));
        let held = spill.as_mut().get(start..end).unwrap_or_default();
        let n = held.len().min(out.len());
        out[..n].copy_from_slice(&held[..n]);
        self.records.pass(&out[..n]);
        // No more than was held.
        self.start += n as u16;
        if self.start < self.end {
            self.spill = Some(spill);
        }
        n
    }
}

impl Read for Incoming<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(spill) = self.spill.take() {
            // Bytes already read come first.
            return Ok(self.hand_over(spill, out));
        }
        let behind = match self.records.behind(out.len()) {
            Some(behind) => behind,
            None => BUF_SIZE.saturating_sub(out.len()),
        };
        if behind == 0 {
            let n = self.socket.read(out)?;
            self.records.pass(&out[..n]);
            return Ok(n);
        }
        let mut spill = Buf::take();
        let into = spill.as_mut();
        let behind = behind.min(into.len());
        let into = &mut into[..behind];
        // An error, the end of the stream or a read that fits in `out` leaves nothing held:
        // the buffer goes back to the pool.
        let n = self
            .socket
            .read_vectored(&mut [IoSliceMut::new(out), IoSliceMut::new(into)])?;
        // `spill` holds what did not fit in `out`.
        let direct = n.min(out.len());
        self.records.pass(&out[..direct]);
        // No more than the pooled buffer holds (32 KiB); never dropped if it were more.
        let held = u16::try_from(n - direct).map_err(|_| io::Error::other("read overran"))?;
        (self.start, self.end) = (0, held);
        if self.start < self.end {
            self.spill = Some(spill);
        }
        Ok(direct)
    }
}

/// The largest TLS record rustls accepts, header included.
const MAX_RECORD: usize = 5 + 16 * 1024 + 2048;

/// Where TLS record boundaries fall in the bytes handed to rustls, to end each read just
/// past a record's header: rustls then completes every record it was given and keeps only
/// those five bytes, so the next read's room in its buffer is a whole record (and none of it
/// a partial record rustls must first move down), while a buffer left empty would be shrunk
/// and grown back 4 KiB a read. It only steers how reads are split: bytes still go to rustls
/// exactly as they came. The relay joins the stream wherever the handshake left it, often
/// inside a record (a client's first data arrives with its Finished): until a header that
/// makes sense is found, or after one that does not, reads are not steered, and the bytes
/// passing are searched for a header, up to `SEARCH` of them. Every held connection keeps
/// one, hence the small integers (a record is at most `MAX_RECORD` long).
#[derive(Default)]
struct Records {
    /// The next record's header, `seen` bytes of it so far (while `body` is 0).
    header: [u8; 5],
    seen: u8,
    /// Bytes of the current record's body still to come.
    body: u16,
    /// The size of the last record whose header was seen, header included; 0 before any.
    last: u16,
    lost: bool,
    /// Bytes searched for a header while lost.
    searched: u32,
}

/// How far to search for a record header before giving up on steering a connection.
const SEARCH: u32 = 64 * 1024;

/// Whether five bytes look like the header of an encrypted record: after the handshake every
/// record is application data (TLS 1.3) or an alert, handshake message or application data
/// (TLS 1.2), all labelled TLS 1.2, and no longer than rustls accepts.
fn plausible_header(header: &[u8]) -> bool {
    match *header {
        [kind, 3, 3, high, low] => {
            (21..=23).contains(&kind)
                && 5 + usize::from(u16::from_be_bytes([high, low])) <= MAX_RECORD
        }
        _ => false,
    }
}

impl Records {
    /// Follows `bytes`, the next ones handed to rustls.
    fn pass(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.lost {
                if self.searched > SEARCH {
                    return;
                }
                // A header split between two passes is missed; the next one will do.
                let found = bytes.windows(5).position(plausible_header);
                let searched = found.unwrap_or(bytes.len());
                self.searched =
                    (self.searched).saturating_add(u32::try_from(searched).unwrap_or(u32::MAX));
                let Some(at) = found else {
                    return;
                };
                bytes = &bytes[at..];
                (self.lost, self.seen, self.body) = (false, 0, 0);
            }
            if self.body > 0 {
                let n = usize::from(self.body).min(bytes.len());
                // No more than `body`, so it fits.
                self.body -= n as u16;
                bytes = &bytes[n..];
                continue;
            }
            let seen = usize::from(self.seen);
            let n = (5 - seen).min(bytes.len());
            self.header[seen..seen + n].copy_from_slice(&bytes[..n]);
            // At most 5.
            self.seen += n as u8;
            bytes = &bytes[n..];
            if self.seen == 5 {
                self.seen = 0;
                if plausible_header(&self.header) {
                    let [_, _, _, high, low] = self.header;
                    self.body = u16::from_be_bytes([high, low]);
                    // At most `MAX_RECORD`, as the header is plausible.
                    self.last = self.body + 5;
                } else {
                    (self.lost, self.body, self.last) = (true, 0, 0);
                }
            }
        }
    }

    /// How many bytes to read past an `offer` so that the read ends five bytes into a record,
    /// taking records still to come to be as long as the last one; `None` when unknown.
    fn behind(&self, offer: usize) -> Option<usize> {
        if self.lost || self.seen != 0 || self.last == 0 {
            return None;
        }
        let (body, last) = (usize::from(self.body), usize::from(self.last));
        let mut end = body + 5;
        if end < offer {
            end += (offer - end).div_ceil(last) * last;
        }
        let behind = end - offer;
        (behind <= BUF_SIZE).then_some(behind)
    }
}

#[derive(PartialEq, Eq)]
enum Peer {
    /// Nothing more to deliver now.
    Drained,
    /// The peer sent close_notify (or closed TCP) and every byte before it is delivered.
    Finished,
}

/// Writes the plaintext rustls holds to the local socket, from rustls' own buffer.
async fn deliver<L, D>(
    tls: &Conn<'_, D>,
    local: &Async<L>,
    total: Tally<'_>,
    flow: &Flow,
) -> io::Result<Peer>
where
    L: AsFd,
    for<'a> &'a L: Write,
{
    loop {
        let written = {
            let mut tls = tls.borrow_mut();
            let mut reader = tls.reader();
            let chunk = match reader.fill_buf() {
                Ok([]) => return Ok(Peer::Finished),
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Peer::Drained),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Peer::Finished),
                Err(e) => return Err(e),
            };
            match local.get_ref().write(chunk) {
                Ok(n) => {
                    reader.consume(n);
                    Some(n)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Some(0),
                Err(e) => return Err(e),
            }
        };
        match written {
            Some(n) => flow.moved(total, &flow.b_to_a, n),
            None => {
                local.write_would_block();
                local.writable().await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connected pair of loopback sockets: (writer, reader).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (reader, _) = listener.accept().unwrap();
        (writer, reader)
    }

    /// Small offers (rustls growing its buffer), large ones (room for a record) and ones
    /// larger than the pooled buffer all get the stream's bytes in order, whichever way each
    /// is served; the pooled buffer is let go once rustls has taken it all; the end of the
    /// stream reads as 0.
    #[test]
    fn incoming_hands_over_the_stream_in_order() {
        let (mut writer, reader) = pair();
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&sent).unwrap();
        drop(writer);
        let mut from = Incoming::new(&reader);
        let mut got = Vec::new();
        let mut offers = [4096, 4096, 16 * 1024, 20_000, 100, 40_000, 4096]
            .into_iter()
            .cycle();
        let mut out = vec![0u8; 40_000];
        loop {
            let offer = offers.next().unwrap();
            let n = from.read(&mut out[..offer]).unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= offer);
            got.extend_from_slice(&out[..n]);
        }
        assert!(!from.holds_bytes(), "a buffer is still held at the end");
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the stream arrived reordered or altered");
    }

    /// Waits until `reader` has `n` bytes waiting, so that one read can take them all.
    fn wait_for(reader: &TcpStream, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut peek = vec![0u8; n];
        let waiting = |peek: &mut [u8]| {
            rustix::net::recv(reader, peek, rustix::net::RecvFlags::PEEK).map_or(0, |(n, _)| n)
        };
        while waiting(&mut peek) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the bytes never arrived"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// One read takes what a small offer fits and, up to 32 KiB in all, keeps the rest for
    /// later offers, which get it without reading the socket again; an offer of 32 KiB or
    /// more reads the socket straight into it.
    #[test]
    fn incoming_reads_32_kib_at_a_time_into_the_offer_first() {
        let (mut writer, reader) = pair();
        reader.set_nonblocking(true).unwrap();
        let mut from = Incoming::new(&reader);
        let block = |n, b| vec![b; n];
        writer.write_all(&block(10_000, 7u8)).unwrap();
        wait_for(&reader, 10_000);
        let mut small = [0u8; 4096];
        assert_eq!(from.read(&mut small).unwrap(), 4096);
        assert!(from.holds_bytes());
        // The socket is empty now: the rest can only come from the pooled buffer.
        let mut big = vec![0u8; 16 * 1024];
        assert_eq!(from.read(&mut big).unwrap(), 10_000 - 4096);
        assert!(big[..10_000 - 4096].iter().all(|&b| b == 7));
        assert!(!from.holds_bytes());
        let err = from.read(&mut big).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(!from.holds_bytes(), "a read that would block held a buffer");
        // 40,000 waiting, 16 KiB offered: one read takes 32 KiB, the offer first.
        writer.write_all(&block(40_000, 9u8)).unwrap();
        wait_for(&reader, 40_000);
        assert_eq!(from.read(&mut big).unwrap(), big.len());
        assert!(from.holds_bytes());
        assert_eq!(from.read(&mut big).unwrap(), BUF_SIZE - big.len());
        assert!(!from.holds_bytes());
        // A read that fits in the offer holds nothing.
        assert_eq!(from.read(&mut big).unwrap(), 40_000 - BUF_SIZE);
        assert!(
            !from.holds_bytes(),
            "a read that fit in the offer held a buffer"
        );
        // An offer of 32 KiB or more is read into directly.
        writer.write_all(&block(50_000, 3u8)).unwrap();
        wait_for(&reader, 50_000);
        let mut huge = vec![0u8; 40_000];
        assert_eq!(from.read(&mut huge).unwrap(), 40_000);
        assert!(!from.holds_bytes());
        assert!(huge.iter().all(|&b| b == 3));
    }

    /// `count` application-data records of `body` bytes each, header included.
    fn records(count: usize, body: usize) -> Vec<u8> {
        let mut stream = Vec::new();
        for r in 0..count {
            stream.extend_from_slice(&[23, 3, 3]);
            stream.extend_from_slice(&(body as u16).to_be_bytes());
            stream.extend((0..body).map(|i| (i * 7 + r) as u8));
        }
        stream
    }

    /// Once a record header has been handed over, a read ends five bytes into a record,
    /// taking the records to come to be as long as the last: what does not fit in the offer
    /// is held for the next offers, and nothing more is read from the socket meanwhile.
    #[test]
    fn incoming_ends_reads_just_past_a_record_header() {
        let (mut writer, reader) = pair();
        reader.set_nonblocking(true).unwrap();
        let mut from = Incoming::new(&reader);
        // Four records of 1005 bytes; a first small offer is not steered yet (32 KiB in all).
        writer.write_all(&records(4, 1000)).unwrap();
        wait_for(&reader, 4020);
        let mut out = vec![0u8; 10_000];
        assert_eq!(from.read(&mut out[..100]).unwrap(), 100);
        assert_eq!(from.read(&mut out[..2000]).unwrap(), 2000);
        assert_eq!(from.read(&mut out[..3000]).unwrap(), 4020 - 2100);
        assert!(!from.holds_bytes());
        // At a record boundary now: an offer of 500 reads to five bytes past the next record.
        writer.write_all(&records(3, 1000)).unwrap();
        wait_for(&reader, 3015);
        assert_eq!(from.read(&mut out[..500]).unwrap(), 500);
        assert!(from.holds_bytes());
        assert_eq!(
            from.read(&mut out).unwrap(),
            1010 - 500,
            "the read was not split"
        );
        assert!(!from.holds_bytes());
        // The next header is known: an offer larger than what waits takes it all directly.
        assert_eq!(from.read(&mut out).unwrap(), 3015 - 1010);
        assert!(!from.holds_bytes());
    }

    /// A stream joined inside a record (where the handshake left it) is not steered until a
    /// header turns up in what passes, and then it is.
    #[test]
    fn incoming_finds_the_records_when_joined_inside_one() {
        let (mut writer, reader) = pair();
        reader.set_nonblocking(true).unwrap();
        let mut from = Incoming::new(&reader);
        let stream = records(3, 2000);
        // 700 bytes into the first record's body.
        writer.write_all(&stream[705..]).unwrap();
        wait_for(&reader, stream.len() - 705);
        let mut out = vec![0u8; 10_000];
        // Unsteered: one read takes everything waiting (less than 32 KiB).
        assert_eq!(from.read(&mut out[..1000]).unwrap(), 1000);
        assert_eq!(from.read(&mut out).unwrap(), stream.len() - 1705);
        assert!(
            from.records.behind(100).is_some(),
            "no header found in the stream"
        );
        // Found: two more records, an offer of 100 reads to five bytes past the first.
        writer.write_all(&records(2, 2000)).unwrap();
        wait_for(&reader, 4010);
        assert_eq!(from.read(&mut out[..100]).unwrap(), 100);
        assert_eq!(from.read(&mut out).unwrap(), 2010 - 100);
        assert_eq!(from.read(&mut out).unwrap(), 2000);
    }
}
