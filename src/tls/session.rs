//! An established TLS session once rustls has handed its record layer over (`tls::record`):
//! both directions' protection, and the few messages that may still come after the
//! handshake. Key updates (TLS 1.3) are followed, with rustls computing the next secrets;
//! session tickets go to rustls' ticket store (client side); a TLS 1.2 hello request (a
//! renegotiation offer) is ignored, as RFC 5246 §7.4.1.1 allows. Anything else ends the
//! connection.

use std::io;

use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ExtractedSecrets, ProtocolVersion, SupportedCipherSuite};

use super::record::{
    broken, violation, Content, Protection, DECODE_ERROR, ILLEGAL_PARAMETER, UNEXPECTED_MESSAGE,
};

/// What a side does with a session ticket sent after the handshake.
pub trait Tickets {
    fn new_session_ticket(&mut self, payload: &[u8]) -> io::Result<()>;
}

impl Tickets for KernelConnection<ClientConnectionData> {
    fn new_session_ticket(&mut self, payload: &[u8]) -> io::Result<()> {
        self.handle_new_session_ticket(payload)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl Tickets for KernelConnection<ServerConnectionData> {
    fn new_session_ticket(&mut self, _: &[u8]) -> io::Result<()> {
        Err(violation(
            "a client sent a session ticket",
            UNEXPECTED_MESSAGE,
        ))
    }
}

const KEY_UPDATE: u8 = 24;
const NEW_SESSION_TICKET: u8 = 4;
const HELLO_REQUEST: u8 = 0;
/// The largest post-handshake message reassembled: a session ticket's largest encoding.
const MAX_MESSAGE: usize = 4 + 0xffff;
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;
const WARNING: u8 = 1;
const FATAL: u8 = 2;

pub struct Session<D> {
    kernel: KernelConnection<D>,
    pub tx: Protection,
    pub rx: Protection,
    tls13: bool,
    /// Records one key may seal before it must be replaced (TLS 1.3) or the connection end
    /// (TLS 1.2): the suite's confidentiality limit, with a margin for the closing records.
    tx_limit: u64,
    /// The peer asked us to update our key too: done before our next record.
    owe_update: bool,
    /// A handshake message that spans records, as far as it has come.
    partial: Vec<u8>,
}

/// What an alert from the peer means for the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Alert {
    /// close_notify: the peer has finished sending.
    Finished,
    /// A warning that changes nothing (TLS 1.2 warnings, user_canceled).
    Ignored,
}

impl<D> Session<D>
where
    KernelConnection<D>: Tickets,
{
    pub fn new(secrets: ExtractedSecrets, kernel: KernelConnection<D>) -> io::Result<Self> {
        let version = kernel.protocol_version();
        let limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        };
        Ok(Session {
            tx: Protection::new(version, secrets.tx)?,
            rx: Protection::new(version, secrets.rx)?,
            tls13: version == ProtocolVersion::TLSv1_3,
            tx_limit: limit.saturating_sub(16),
            owe_update: false,
            partial: Vec::new(),
            kernel,
        })
    }

    /// Before our next record: when the peer asked for a key update or our key has sealed
    /// nearly all it may, seals a key update into `out` (at least 32 bytes) and switches to
    /// the next key; returns the record's length. A TLS 1.2 key that is used up ends the
    /// connection instead, as TLS 1.2 cannot replace it.
    pub fn key_update_due(&mut self, out: &mut [u8]) -> io::Result<Option<usize>> {
        if !self.owe_update && self.tx.records() < self.tx_limit {
            return Ok(None);
        }
        if !self.tls13 {
            return Err(broken("the TLS 1.2 key has sealed all it may"));
        }
        let prefix = self.tx.prefix();
        let message = [KEY_UPDATE, 0, 0, 1, 0];
        out.get_mut(prefix..prefix + message.len())
            .ok_or_else(|| io::Error::other("no room for a key update"))?
            .copy_from_slice(&message);
        let len = self.tx.seal(Content::Handshake, out, message.len())?;
        let (_, secrets) = self
            .kernel
            .update_tx_secret()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.tx = Protection::new(ProtocolVersion::TLSv1_3, (0, secrets))?;
        self.owe_update = false;
        Ok(Some(len))
    }

    /// Handles the plaintext of a handshake record from the peer.
    pub fn handshake(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Err(violation("an empty handshake record", UNEXPECTED_MESSAGE));
        }
        // A message may span records: what came before is joined with this record.
        let joined;
        let mut rest = if self.partial.is_empty() {
            bytes
        } else {
            self.partial.extend_from_slice(bytes);
            joined = std::mem::take(&mut self.partial);
            &joined[..]
        };
        while let Some((message, after)) = whole_message(rest) {
            self.message(message, after.is_empty())?;
            rest = after;
        }
        if rest.len() > MAX_MESSAGE {
            return Err(violation(
                "a handshake message longer than TLS allows",
                DECODE_ERROR,
            ));
        }
        self.partial = rest.to_vec();
        Ok(())
    }

    /// One whole message (header included); `last` when nothing follows it in its record.
    fn message(&mut self, message: &[u8], last: bool) -> io::Result<()> {
        let (kind, body) = (message[0], &message[4..]);
        match (kind, self.tls13) {
            (KEY_UPDATE, true) => {
                // A key change may not fall inside a record (RFC 8446 §5.1).
                if !last {
                    return Err(violation(
                        "data behind a key update in its record",
                        UNEXPECTED_MESSAGE,
                    ));
                }
                match body {
                    [0] => {}
                    [1] => self.owe_update = true,
                    [_] => {
                        return Err(violation(
                            "a key update with an unknown request_update",
                            ILLEGAL_PARAMETER,
                        ))
                    }
                    _ => return Err(violation("a malformed key update", DECODE_ERROR)),
                }
                let (_, secrets) = self
                    .kernel
                    .update_rx_secret()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                self.rx = Protection::new(ProtocolVersion::TLSv1_3, (0, secrets))?;
                Ok(())
            }
            (NEW_SESSION_TICKET, true) => self.kernel.new_session_ticket(body),
            (HELLO_REQUEST, false) if body.is_empty() => Ok(()),
            _ => Err(violation(
                "an unexpected handshake message after the handshake",
                UNEXPECTED_MESSAGE,
            )),
        }
    }

    /// What an alert record from the peer means.
    pub fn alert(&self, bytes: &[u8]) -> io::Result<Alert> {
        match *bytes {
            [_, CLOSE_NOTIFY] => Ok(Alert::Finished),
            [_, USER_CANCELED] => Ok(Alert::Ignored),
            [WARNING, _] if !self.tls13 => Ok(Alert::Ignored),
            [_, _] => Err(broken("the peer sent a fatal alert")),
            _ => Err(violation("a malformed alert", DECODE_ERROR)),
        }
    }

    /// Seals our close_notify into `out` (at least 32 bytes); returns its length.
    pub fn close_notify(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.seal_alert([WARNING, CLOSE_NOTIFY], out)
    }

    /// Seals the fatal alert `description` (a violation's, `record::alert_for`) into `out`
    /// (at least 32 bytes); returns its length.
    pub fn fatal_alert(&mut self, description: u8, out: &mut [u8]) -> io::Result<usize> {
        self.seal_alert([FATAL, description], out)
    }

    fn seal_alert(&mut self, alert: [u8; 2], out: &mut [u8]) -> io::Result<usize> {
        let prefix = self.tx.prefix();
        out.get_mut(prefix..prefix + alert.len())
            .ok_or_else(|| io::Error::other("no room for an alert"))?
            .copy_from_slice(&alert);
        self.tx.seal(Content::Alert, out, alert.len())
    }
}

/// The first whole handshake message in `bytes` (header included) and what follows it.
fn whole_message(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let [_, a, b, c, ..] = *bytes else {
        return None;
    };
    // A 24-bit length, whatever the width of `usize`.
    let len = 4 + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
    (bytes.len() >= len).then(|| bytes.split_at(len))
}

#[cfg(test)]
mod tests {
    //! The record layer against rustls' own: a real handshake in memory (our client through
    //! rustls' unbuffered API, rustls' buffered server), then records both ways, under every
    //! suite sidegate offers.
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::client::UnbufferedClientConnection;
    use rustls::crypto::ring::{cipher_suite as cs, default_provider};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::ServerName;
    use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
    use rustls::version::{TLS12, TLS13};
    use rustls::{ServerConfig, ServerConnection};

    use crate::tls::configs::client_config;
    use crate::tls::record::{body_len, HEADER, MAX_PLAINTEXT};

    use crate::tls::fixtures::{identity, TD};

    /// web's server, offering only `suite`.
    fn server(suite: SupportedCipherSuite) -> ServerConnection {
        let web = identity("web.pem", "web-key-sec1.pem");
        let version = match suite {
            SupportedCipherSuite::Tls13(_) => &TLS13,
            SupportedCipherSuite::Tls12(_) => &TLS12,
        };
        let provider = CryptoProvider {
            cipher_suites: vec![suite],
            ..default_provider()
        };
        let config = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(web.chain.clone(), web.key.clone_key())
            .unwrap();
        ServerConnection::new(Arc::new(config)).unwrap()
    }

    /// db's client session with web's server under `suite`, and the bytes the server sent
    /// past the handshake (TLS 1.3 session tickets), as the relay would get them.
    fn establish(
        suite: SupportedCipherSuite,
    ) -> (Session<ClientConnectionData>, ServerConnection, Vec<u8>) {
        let (db, web) = (
            identity("db.pem", "db-key-pkcs1.pem"),
            identity("web.pem", "web-key-sec1.pem"),
        );
        let name = ServerName::try_from(format!("web.default.dc1.internal.{TD}")).unwrap();
        let mut client =
            UnbufferedClientConnection::new(client_config(&db, &web.spiffe_id).unwrap(), name)
                .unwrap();
        let mut server = server(suite);
        let mut to_client = Vec::new();
        for _ in 0..50 {
            let UnbufferedStatus { discard, state } = client.process_tls_records(&mut to_client);
            let (mut read, mut done) = (false, false);
            match state.unwrap() {
                ConnectionState::EncodeTlsData(mut data) => {
                    let mut buf = vec![0u8; 16 * 1024];
                    let n = data.encode(&mut buf).unwrap();
                    server.read_tls(&mut &buf[..n]).unwrap();
                    server.process_new_packets().unwrap();
                }
                ConnectionState::TransmitTlsData(data) => data.done(),
                ConnectionState::BlockedHandshake => read = true,
                ConnectionState::WriteTraffic(_) => done = true,
                _ => panic!("unexpected state during the handshake"),
            }
            to_client.drain(..discard);
            if done && !client.is_handshaking() {
                assert!(!server.is_handshaking());
                while server.wants_write() {
                    server.write_tls(&mut to_client).unwrap();
                }
                let (secrets, kernel) = client.dangerous_into_kernel_connection().unwrap();
                return (Session::new(secrets, kernel).unwrap(), server, to_client);
            }
            if read || done {
                server.write_tls(&mut to_client).unwrap();
            }
        }
        panic!("the handshake did not finish");
    }

    /// Seals `data` as one record and hands it to the server; returns what the server reads.
    fn to_server(
        s: &mut Session<ClientConnectionData>,
        server: &mut ServerConnection,
        data: &[u8],
    ) -> Vec<u8> {
        let mut record = vec![0u8; s.tx.prefix() + data.len() + s.tx.suffix()];
        let prefix = s.tx.prefix();
        record[prefix..prefix + data.len()].copy_from_slice(data);
        let len =
            s.tx.seal(Content::ApplicationData, &mut record, data.len())
                .unwrap();
        assert_eq!(len, record.len());
        // rustls takes a large record over several reads.
        let mut wire = &record[..];
        while !wire.is_empty() {
            server.read_tls(&mut wire).unwrap();
            server.process_new_packets().unwrap();
        }
        let mut got = vec![0u8; data.len() + 10];
        let n = server.reader().read(&mut got).unwrap_or(0);
        got.truncate(n);
        got
    }

    /// Opens every record in `wire` with the session as the relay does: application data is
    /// returned, handshake messages and alerts are handled.
    fn from_server(
        s: &mut Session<ClientConnectionData>,
        mut wire: &[u8],
    ) -> io::Result<(Vec<u8>, Option<Alert>)> {
        let mut data = Vec::new();
        while !wire.is_empty() {
            let len = HEADER + body_len(&wire[..HEADER].try_into().unwrap())?;
            let mut record = wire[..len].to_vec();
            wire = &wire[len..];
            let (kind, text) = s.rx.open(&mut record)?;
            let text = &record[text];
            match kind {
                Content::ApplicationData => data.extend_from_slice(text),
                Content::Handshake => s.handshake(text)?,
                Content::Alert => return Ok((data, Some(s.alert(text)?))),
            }
        }
        Ok((data, None))
    }

    fn server_sends(server: &mut ServerConnection, data: &[u8]) -> Vec<u8> {
        server.writer().write_all(data).unwrap();
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        wire
    }

    const SUITES: [SupportedCipherSuite; 6] = [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ];

    /// Under every suite: records of every size up to a full one go both ways, the server's
    /// session tickets are taken, and a close_notify ends each side's sending.
    #[test]
    fn records_cross_to_and_from_rustls_under_every_suite() {
        for suite in SUITES {
            let (mut s, mut server, tickets) = establish(suite);
            let (data, alert) = from_server(&mut s, &tickets).unwrap();
            assert!(data.is_empty() && alert.is_none(), "{suite:?}");
            for len in [0, 1, 1000, MAX_PLAINTEXT] {
                let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                if len > 0 {
                    assert!(
                        to_server(&mut s, &mut server, &data) == data,
                        "{suite:?} {len} up"
                    );
                }
                let wire = server_sends(&mut server, &data);
                let (got, _) = from_server(&mut s, &wire).unwrap();
                assert!(got == data, "{suite:?} {len} down");
            }
            let mut close = [0u8; 64];
            let len = s.close_notify(&mut close).unwrap();
            server.read_tls(&mut &close[..len]).unwrap();
            let state = server.process_new_packets().unwrap();
            assert!(state.peer_has_closed(), "{suite:?}: close_notify not seen");
            server.send_close_notify();
            let wire = server_sends(&mut server, b"");
            assert_eq!(from_server(&mut s, &wire).unwrap().1, Some(Alert::Finished));
        }
    }

    /// A key update from the peer (TLS 1.3) is followed: its records after it open with the
    /// next key, and the update it asks of us is sent before our next record, which the peer
    /// then opens with our next key.
    #[test]
    fn key_updates_are_followed_both_ways() {
        for suite in &SUITES[..3] {
            let (mut s, mut server, tickets) = establish(*suite);
            from_server(&mut s, &tickets).unwrap();
            server.refresh_traffic_keys().unwrap();
            let wire = server_sends(&mut server, b"after the update");
            assert_eq!(from_server(&mut s, &wire).unwrap().0, b"after the update");
            let mut update = [0u8; 64];
            let len = s
                .key_update_due(&mut update)
                .unwrap()
                .expect("no key update owed");
            server.read_tls(&mut &update[..len]).unwrap();
            server.process_new_packets().unwrap();
            assert_eq!(
                to_server(&mut s, &mut server, b"ours, next key"),
                b"ours, next key"
            );
            assert!(s.key_update_due(&mut update).unwrap().is_none());
        }
    }

    /// A record altered on the way, or one opened out of turn, does not open.
    #[test]
    fn altered_or_replayed_records_are_refused() {
        for suite in [SUITES[0], SUITES[3]] {
            let (mut s, mut server, tickets) = establish(suite);
            from_server(&mut s, &tickets).unwrap();
            let mut wire = server_sends(&mut server, b"do not touch");
            let original = wire.clone();
            let last = wire.len() - 1;
            wire[last] ^= 1;
            let err = from_server(&mut s, &wire).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{suite:?}");
            // The sequence number moved on only for records that opened: the same record,
            // intact, now opens; sent again, it does not.
            assert_eq!(from_server(&mut s, &original).unwrap().0, b"do not touch");
            assert!(
                from_server(&mut s, &original).is_err(),
                "{suite:?}: a replay opened"
            );
        }
    }

    /// Handshake messages are reassembled across records, and the ones that must not come
    /// after the handshake end the connection.
    #[test]
    fn post_handshake_messages_are_reassembled_or_refused() {
        let (mut s, mut server, tickets) = establish(SUITES[0]);
        from_server(&mut s, &tickets).unwrap();
        // A key update split over two records: the receive key changes once it is whole, so
        // the server's next record (under its old key) no longer opens.
        s.handshake(&[24, 0]).unwrap();
        s.handshake(&[0, 1, 0]).unwrap();
        assert!(from_server(&mut s, &server_sends(&mut server, b"x")).is_err());
        let (mut s, _server, _) = establish(SUITES[0]);
        // A ClientHello after the handshake.
        let err = s.handshake(&[1, 0, 0, 2, 3, 3]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A key update followed by more in its record.
        let (mut s, _server, _) = establish(SUITES[0]);
        assert!(s.handshake(&[24, 0, 0, 1, 0, 24, 0, 0, 1, 0]).is_err());
        // A fatal alert.
        assert!(s.alert(&[2, 40]).is_err());
        assert_eq!(s.alert(&[1, 90]).unwrap(), Alert::Ignored);
    }
}
