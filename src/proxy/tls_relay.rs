//! Relaying between a local plaintext socket (TCP or Unix) and an mTLS connection whose
//! handshake is done, keeping half-close: a local EOF becomes a TLS close_notify plus a TCP
//! write shutdown, and the peer's close_notify (or bare EOF, as some proxies send) a local
//! write shutdown.
//!
//! The records are sealed and opened here, in place (`tls::record`), with no copy of ours or
//! rustls': plaintext is read from the local socket straight into the two record slots of a
//! pooled buffer, sealed there and sent in one vectored write; ciphertext is read into a
//! pooled buffer, each record decrypted where it lies and its plaintext written from there.
//! Reads of ciphertext end just past the header of the record after the last whole one they
//! hold, so only those five bytes move to the front before the next read. Like the plain
//! relay, a direction holds a pooled buffer only while bytes move, so an idle connection
//! keeps only its keys.
//!
//! rustls' own APIs would copy: its buffered one copies each record's plaintext into a buffer
//! of its own to encrypt it and each received record into its own, and its unbuffered one
//! copies more (each decrypted record into an allocated buffer, each encrypted one out of one).

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::Range;
use std::os::fd::AsFd;
use std::time::Duration;

use rustls::kernel::KernelConnection;
use smol::future;

use super::buffers::{Buf, BUF_SIZE};
use super::handshake::Established;
use super::reactor::{Async, ShutdownWrite};
use super::relay::{step, Flow, Pace, Relayed, Step};
use crate::metrics::Tally;
use crate::tls::record::{alert_for, body_len, Content, HEADER, MAX_PLAINTEXT};
use crate::tls::session::{Alert, Session, Tickets};

/// The session, borrowed by one direction at a time: both directions run in this one task
/// and no borrow is held across an await.
type Shared<D> = RefCell<Session<D>>;

/// A pooled buffer holds two record slots of this size, each room for a whole record.
const SLOT: usize = BUF_SIZE / 2;

/// Relays until both directions end, one fails, or the pair is idle for `idle`. `remote`
/// carries the session `tls` established.
pub async fn relay_tls<L, D>(
    local: &Async<L>,
    remote: &Async<TcpStream>,
    tls: Established<D>,
    idle: Duration,
    to_tls: Tally<'_>,
    from_tls: Tally<'_>,
) -> io::Result<Relayed>
where
    L: ShutdownWrite,
    for<'a> &'a L: Read + Write,
    KernelConnection<D>: Tickets,
{
    let Established {
        session,
        plaintext,
        ciphertext,
        peer_finished,
        ..
    } = tls;
    let session = RefCell::new(session);
    let flow = Flow::new();
    let to_peer = ToPeer {
        socket: remote,
        partial: Cell::new(false),
    };
    let up = local_to_tls(local, &to_peer, &session, to_tls, &flow);
    let early = (plaintext, ciphertext, peer_finished);
    let down = tls_to_local(&to_peer, local, &session, early, from_tls, &flow);
    future::or(future::try_zip(up, down), flow.watchdog(idle)).await?;
    Ok(flow.relayed())
}

/// The peer's socket as both directions write to it: our records, and the alert when the
/// peer's break the protocol. `partial`: a write of records is under way, so part of a record
/// may be out already, and an alert now would land inside it.
struct ToPeer<'a> {
    socket: &'a Async<TcpStream>,
    partial: Cell<bool>,
}

impl ToPeer<'_> {
    async fn send(&self, records: &mut [IoSlice<'_>]) -> io::Result<()> {
        self.partial.set(true);
        self.socket.send_all(records).await?;
        self.partial.set(false);
        Ok(())
    }

    /// After `error` from opening the peer's records: when it is a violation TLS names an
    /// alert for (a record that fails to authenticate: bad_record_mac), sends that fatal alert,
    /// as far as the socket takes it at once; the connection ends either way. Not while a
    /// record of ours is part way out.
    fn alert_after<D>(&self, error: &io::Error, tls: &Shared<D>)
    where
        KernelConnection<D>: Tickets,
    {
        let Some(description) = alert_for(error).filter(|_| !self.partial.get()) else {
            return;
        };
        let mut alert = [0u8; 64];
        if let Ok(len) = tls.borrow_mut().fatal_alert(description, &mut alert) {
            let _ = self.socket.get_ref().write(&alert[..len]);
        }
    }
}

/// Plaintext from the local side, sealed. Waits for the local socket without holding a
/// buffer; holds one while the remote socket takes the records.
async fn local_to_tls<L, D>(
    local: &Async<L>,
    remote: &ToPeer<'_>,
    tls: &Shared<D>,
    total: Tally<'_>,
    flow: &Flow,
) -> io::Result<()>
where
    L: AsFd,
    for<'a> &'a L: Read,
    KernelConnection<D>: Tickets,
{
    let mut pace = Pace::default();
    let mut small = [0u8; 64];
    loop {
        // A key update the peer asked for, or our key's limit, comes before our next record.
        let update = tls.borrow_mut().key_update_due(&mut small)?;
        if let Some(len) = update {
            remote.send(&mut [IoSlice::new(&small[..len])]).await?;
        }
        let read = {
            let mut buf = Buf::take();
            let (first, second) = buf.as_mut().split_at_mut(SLOT);
            let (prefix, room) = {
                let tls = tls.borrow();
                let prefix = tls.tx.prefix();
                (prefix, (SLOT - prefix - tls.tx.suffix()).min(MAX_PLAINTEXT))
            };
            let read = step(local.get_ref().read_vectored(&mut [
                IoSliceMut::new(&mut first[prefix..prefix + room]),
                IoSliceMut::new(&mut second[prefix..prefix + room]),
            ]))?;
            if let Step::Moved(n) = read {
                let (a, b) = seal_two(&mut tls.borrow_mut(), (first, second), n, room)?;
                remote
                    .send(&mut [IoSlice::new(&first[..a]), IoSlice::new(&second[..b])])
                    .await?;
                flow.moved(total, &flow.a_to_b, n);
            }
            read
        };
        if read == Step::Eof {
            let len = tls.borrow_mut().close_notify(&mut small)?;
            remote.send(&mut [IoSlice::new(&small[..len])]).await?;
            return remote.socket.get_ref().shutdown(Shutdown::Write);
        }
        if read == Step::Wait {
            local.read_would_block();
        }
        pace.next(read == Step::Wait, local.readable()).await?;
    }
}

/// Seals `n` bytes of plaintext read into two slots of `room` bytes each: one record, or two
/// when the first slot is full. Returns each record's length (0 for none).
fn seal_two<D>(
    tls: &mut Session<D>,
    (first, second): (&mut [u8], &mut [u8]),
    n: usize,
    room: usize,
) -> io::Result<(usize, usize)>
where
    KernelConnection<D>: Tickets,
{
    let a = tls.tx.seal(Content::ApplicationData, first, n.min(room))?;
    let b = match n.saturating_sub(room) {
        0 => 0,
        b => tls.tx.seal(Content::ApplicationData, second, b)?,
    };
    Ok((a, b))
}

/// Records opened per delivery: their plaintexts leave in one vectored write.
const BATCH: usize = 4;

/// TLS from the peer, opened and delivered to the local side.
async fn tls_to_local<L, D>(
    to_peer: &ToPeer<'_>,
    local: &Async<L>,
    tls: &Shared<D>,
    (plaintext, ciphertext, finished): (Vec<u8>, Vec<u8>, bool),
    total: Tally<'_>,
    flow: &Flow,
) -> io::Result<()>
where
    L: ShutdownWrite,
    for<'a> &'a L: Write,
    KernelConnection<D>: Tickets,
{
    let remote = to_peer.socket;
    // What came with the handshake first.
    if !plaintext.is_empty() {
        local.send_all(&mut [IoSlice::new(&plaintext)]).await?;
        flow.moved(total, &flow.b_to_a, plaintext.len());
    }
    drop(plaintext);
    if finished {
        return local.get_ref().shutdown_write();
    }
    let mut inbox = Inbox::holding(&ciphertext)?;
    drop(ciphertext);
    let mut pace = Pace::default();
    loop {
        // Every whole record held, a batch at a time: opened in place, then the batch's
        // plaintext delivered.
        loop {
            let (texts, count, finished) =
                open_batch(&mut inbox, tls).inspect_err(|e| to_peer.alert_after(e, tls))?;
            let n = texts.iter().map(Range::len).sum();
            if n > 0 {
                let bytes = inbox.bytes();
                let mut parts = texts.map(|text| IoSlice::new(&bytes[text]));
                local.send_all(&mut parts[..count]).await?;
                // Only bytes delivered count as traffic for the idle timeout.
                flow.moved(total, &flow.b_to_a, n);
            }
            if finished {
                return local.get_ref().shutdown_write();
            }
            if count < BATCH {
                break;
            }
        }
        inbox.compact();
        let read = inbox.read_from(remote.get_ref())?;
        match read {
            // A peer that closes TCP without close_notify has still finished sending; an
            // incomplete record it left is dropped.
            Step::Eof => return local.get_ref().shutdown_write(),
            Step::Wait => remote.read_would_block(),
            Step::Moved(_) | Step::Again => {}
        }
        pace.next(read == Step::Wait, remote.readable()).await?;
    }
}

/// Opens the whole records the inbox holds, up to `BATCH` of application data: where their
/// plaintexts are, how many, and whether the peer's close_notify came after them. Key updates
/// and tickets are handled on the way.
fn open_batch<D>(
    inbox: &mut Inbox,
    tls: &Shared<D>,
) -> io::Result<([Range<usize>; BATCH], usize, bool)>
where
    KernelConnection<D>: Tickets,
{
    let mut texts = [const { 0..0 }; BATCH];
    let mut count = 0;
    while count < BATCH {
        let Some(record) = inbox.next_record()? else {
            break;
        };
        let bytes = &mut inbox.bytes()[record.clone()];
        let (kind, text) = tls.borrow_mut().rx.open(bytes)?;
        let bytes = &bytes[text.clone()];
        match kind {
            Content::ApplicationData => {
                texts[count] = record.start + text.start..record.start + text.end;
                count += 1;
            }
            Content::Handshake => tls.borrow_mut().handshake(bytes)?,
            Content::Alert => {
                if tls.borrow().alert(bytes)? == Alert::Finished {
                    return Ok((texts, count, true));
                }
            }
        }
    }
    Ok((texts, count, false))
}

/// Ciphertext read from the peer and not yet opened: `buf[start..end]`, the buffer held only
/// while it holds bytes.
struct Inbox {
    buf: Option<Buf>,
    start: u16,
    end: u16,
    /// The length of the last whole record, header included (0 before the first): records
    /// to come are taken to be as long, to end reads just past a header.
    last: u16,
}

impl Inbox {
    /// An inbox holding `bytes` (what the handshake read past its last message: less than
    /// a record, as rustls takes every whole record it is given).
    fn holding(bytes: &[u8]) -> io::Result<Inbox> {
        let mut inbox = Inbox {
            buf: None,
            start: 0,
            end: 0,
            last: 0,
        };
        if !bytes.is_empty() {
            let mut buf = Buf::take();
            buf.as_mut()
                .get_mut(..bytes.len())
                .ok_or_else(|| io::Error::other("more left by the handshake than a buffer holds"))?
                .copy_from_slice(bytes);
            inbox.buf = Some(buf);
            // At most a buffer's length, as just checked.
            inbox.end = bytes.len() as u16;
        }
        Ok(inbox)
    }

    fn bytes(&mut self) -> &mut [u8] {
        self.buf.as_mut().map(Buf::as_mut).unwrap_or_default()
    }

    /// The next whole record held, if any, taken out of the inbox.
    fn next_record(&mut self) -> io::Result<Option<Range<usize>>> {
        let (start, end) = (usize::from(self.start), usize::from(self.end));
        let Some(header) = self.bytes()[..end].get(start..start + HEADER) else {
            return Ok(None);
        };
        let header = <[u8; HEADER]>::try_from(header).unwrap_or_default();
        let len = HEADER + body_len(&header)?;
        if end - start < len {
            return Ok(None);
        }
        // A record is shorter than a buffer (`body_len` checks), so these fit.
        self.start += len as u16;
        self.last = len as u16;
        Ok(Some(start..start + len))
    }

    /// Moves what is left of a partial record to the front, or lets the buffer go.
    fn compact(&mut self) {
        let (start, end) = (usize::from(self.start), usize::from(self.end));
        if start == end {
            self.buf = None;
        } else if start > 0 {
            self.bytes().copy_within(start..end, 0);
        }
        self.end -= self.start;
        self.start = 0;
    }

    /// How much to read now (after `compact`): the rest of the partial record held, as many
    /// more records as fit (each taken to be as long as the last), and the next one's header;
    /// all the room when nothing is known yet.
    fn want(&self) -> usize {
        let (held, last) = (usize::from(self.end), usize::from(self.last));
        let room = BUF_SIZE - held;
        // The partial record's length once its header is all there, else the last one's.
        let current = self
            .buf
            .as_ref()
            .and_then(|b| b.as_slice().get(..held.min(HEADER))?.try_into().ok())
            .and_then(|header: [u8; HEADER]| body_len(&header).ok())
            .map_or(last, |body| HEADER + body);
        let rest = current.saturating_sub(held);
        if last == 0 || rest + HEADER > room {
            return room;
        }
        rest + (room - rest - HEADER) / last * last + HEADER
    }

    /// One read from the peer into the free end of the buffer (taken for it).
    fn read_from(&mut self, socket: &TcpStream) -> io::Result<Step> {
        let want = self.want();
        let end = usize::from(self.end);
        let buf = self.buf.get_or_insert_with(Buf::take);
        let read = step((&*socket).read(&mut buf.as_mut()[end..end + want]));
        if let Ok(Step::Moved(n)) = read {
            // No more than the buffer's room (32 KiB + 1 KiB).
            self.end += n as u16;
        }
        if self.end == 0 {
            self.buf = None;
        }
        read
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

    /// Takes every whole record the inbox holds, as (start, length) pairs.
    fn take_all(inbox: &mut Inbox) -> Vec<(usize, usize)> {
        let mut got = Vec::new();
        while let Some(r) = inbox.next_record().unwrap() {
            got.push((r.start, r.len()));
        }
        got
    }

    /// Records come out whole and in order however reads cut the stream; once a record has
    /// been seen, a read ends just past the next header, so only five bytes move to the front
    /// and full-sized records arrive two per read; the buffer is let go once empty.
    #[test]
    fn inbox_reads_two_records_and_the_next_header_at_a_time() {
        let (mut writer, reader) = pair();
        reader.set_nonblocking(true).unwrap();
        let body = 16 * 1024 + 17;
        let stream = records(7, body);
        let record = HEADER + body;
        // The handshake left the first 100 bytes.
        let mut inbox = Inbox::holding(&stream[..100]).unwrap();
        writer.write_all(&stream[100..]).unwrap();
        wait_for(&reader, stream.len() - 100);
        assert!(take_all(&mut inbox).is_empty());
        inbox.compact();
        // Nothing is known of the records' lengths yet: all the room is read.
        assert_eq!(inbox.want(), BUF_SIZE - 100);
        assert!(matches!(inbox.read_from(&reader).unwrap(), Step::Moved(_)));
        assert_eq!(take_all(&mut inbox), vec![(0, record), (record, record)]);
        inbox.compact();
        // The next record is partly there: its rest, one more record and a header are read.
        let held = usize::from(inbox.end);
        assert_eq!(held, BUF_SIZE - 2 * record);
        assert_eq!(inbox.want(), record - held + record + HEADER);
        assert!(matches!(inbox.read_from(&reader).unwrap(), Step::Moved(_)));
        assert_eq!(take_all(&mut inbox), vec![(0, record), (record, record)]);
        inbox.compact();
        assert_eq!(
            usize::from(inbox.end),
            HEADER,
            "more than a header was moved"
        );
        // Steady state: two records and a header.
        assert_eq!(inbox.want(), 2 * record);
        assert!(matches!(inbox.read_from(&reader).unwrap(), Step::Moved(_)));
        assert_eq!(take_all(&mut inbox), vec![(0, record), (record, record)]);
        inbox.compact();
        assert_eq!(usize::from(inbox.end), HEADER);
        // The last record: read whole, nothing left, the buffer let go.
        assert!(matches!(inbox.read_from(&reader).unwrap(), Step::Moved(_)));
        assert_eq!(take_all(&mut inbox), vec![(0, record)]);
        inbox.compact();
        assert!(inbox.buf.is_none(), "an empty inbox held a buffer");
        drop(writer);
        assert!(inbox.read_from(&reader).unwrap() == Step::Eof);
        assert!(inbox.buf.is_none());
    }

    /// A read that would block holds no buffer; a record whose header lies is refused.
    #[test]
    fn inbox_holds_nothing_while_waiting_and_refuses_a_bad_header() {
        let (mut writer, reader) = pair();
        reader.set_nonblocking(true).unwrap();
        let mut inbox = Inbox::holding(&[]).unwrap();
        assert!(inbox.read_from(&reader).unwrap() == Step::Wait);
        assert!(inbox.buf.is_none());
        // A header claiming a body longer than TLS allows.
        writer.write_all(&[23, 3, 3, 0xff, 0xff, 1, 2, 3]).unwrap();
        wait_for(&reader, 8);
        assert!(matches!(inbox.read_from(&reader).unwrap(), Step::Moved(8)));
        let err = inbox.next_record().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
