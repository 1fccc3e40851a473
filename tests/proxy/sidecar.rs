//! The sidecar's upstream listeners end to end: a local app's plaintext in, mTLS out with our
//! leaf, the target's SNI and exactly the target's identity required of the server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::apps::{answer_after_eof, app, exchange, half_close_exchange, shut_tcp, shut_unix};
use common::sidecars::{db_upstream, fixture, mesh_client, DB, WEB};
use common::*;
use rustls::version::{TLS12, TLS13};
use rustls::{AlertDescription, ProtocolVersion};
use sidegate::metrics::HandshakeFailure;
use sidegate::tls::configs::{client_config, server_config};

/// `db` in partition part2 of dc1, serving its real mesh leaf and requiring client certificates.
fn db_sidecar() -> Backend {
    Backend::serve(server_config(&DB.identity()).unwrap(), "db")
}

/// Dial the instances directly.
const NONE: &str = r#"mesh_gateway = { mode = "none" }"#;

/// The web sidecar's config: one TCP and one Unix upstream to `db`, dialled at `instance`.
fn web_sidecar(
    instance: std::net::SocketAddr,
    port: u16,
    socket: &std::path::Path,
) -> sidegate::proxy::Running {
    start(&format!(
        r#"{}
{}{}[[catalog.services]]
name = "db"
partition = "part2"
instances = ["{instance}"]
"#,
        WEB.header(),
        db_upstream(&format!("local_bind_port = {port}"), NONE),
        db_upstream(
            &format!(
                "local_bind_socket_path = \"{}\"\nlocal_bind_socket_mode = \"0600\"",
                socket.display()
            ),
            NONE
        ),
    ))
}

fn expected(payload: &[u8]) -> Vec<u8> {
    [payload, b"served-by:db\n"].concat()
}

#[test]
fn local_app_reaches_the_target_over_mtls() {
    let db = db_sidecar();
    let port = free_port();
    let socket = std::env::temp_dir().join(format!("sidegate-up-{}.sock", std::process::id()));
    let web = web_sidecar(db.addr, port, &socket);

    // TCP: a payload larger than any buffer, then a half-close; the echo and the sign-off
    // after the half-close prove both directions and the half-close crossed mTLS intact.
    let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let got = exchange(tcp.try_clone().unwrap(), tcp, &payload, shut_tcp);
    assert!(got == expected(&payload), "got {} bytes back", got.len());

    // Unix socket, with the configured mode.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let unix = UnixStream::connect(&socket).unwrap();
    unix.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert_eq!(
        exchange(unix.try_clone().unwrap(), unix, b"over a socket", shut_unix),
        expected(b"over a socket")
    );

    assert_eq!(db.accepted(), 2);
    assert_eq!(web.metrics.upstream.handshake_failures.get(), 0);
    eventually("bytes counted", || {
        web.metrics.upstream.bytes_to_upstream.get() >= payload.len() as u64
    });
}

#[test]
fn an_impostor_with_a_valid_certificate_is_refused() {
    // The endpoint serves web's (valid, same CA) leaf where db is expected.
    let impostor = Backend::serve(server_config(&WEB.identity()).unwrap(), "web");
    let port = free_port();
    let socket = std::env::temp_dir().join(format!("sidegate-imp-{}.sock", std::process::id()));
    let web = web_sidecar(impostor.addr, port, &socket);
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = tcp.write_all(b"secret");
    let _ = tcp.shutdown(Shutdown::Write);
    // Closed with the app's bytes unread: an EOF or a reset, never an answer.
    let mut got = Vec::new();
    match tcp.read_to_end(&mut got) {
        Ok(_) => assert!(got.is_empty(), "the impostor must never answer the app"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    eventually("handshake failure counted", || {
        web.metrics.upstream.handshake_failures.get() == 1
    });
}

/// db's sidecar: inbound mTLS on a loopback port, to db's app, with these intentions.
fn db_inbound(intentions: &str) -> sidegate::proxy::Running {
    DB.inbound(app("db"), intentions)
}

#[test]
fn app_to_app_through_upstream_and_inbound_listeners() {
    let db = db_inbound("");
    let port = free_port();
    let socket = std::env::temp_dir().join(format!("sidegate-e2e-{}.sock", std::process::id()));
    let web = web_sidecar(db.inbound_addr.unwrap(), port, &socket);
    let payload: Vec<u8> = (0..8_000_000u32).map(|i| (i % 253) as u8).collect();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let got = exchange(tcp.try_clone().unwrap(), tcp, &payload, shut_tcp);
    assert!(
        got == [&payload[..], b"app:db\n"].concat(),
        "got {} bytes back",
        got.len()
    );
    assert_eq!(db.metrics.inbound.denied.get(), 0);
    eventually("inbound bytes counted", || {
        db.metrics.inbound.bytes_from_mesh.get() == payload.len() as u64
    });
    assert_eq!(web.metrics.upstream.handshake_failures.get(), 0);
}

#[test]
fn callers_denied_by_intentions_or_without_a_certificate_are_refused() {
    let db = db_inbound("[sidecar.intentions]\ndefault = \"allow\"\n[[sidecar.intentions.rules]]\nsource = \"web\"\nsource_partition = \"default\"\naction = \"deny\"\n");
    let port = free_port();
    let socket = std::env::temp_dir().join(format!("sidegate-deny-{}.sock", std::process::id()));
    let _web = web_sidecar(db.inbound_addr.unwrap(), port, &socket);
    // A denied caller gets nothing from the app.
    local_app_gets_nothing(port, b"let me in");
    eventually("denial counted", || db.metrics.inbound.denied.get() == 1);

    // No client certificate at all, from a client that would accept db's own (it trusts the
    // mesh roots and requires db's SPIFFE ID): the inbound listener itself refuses it.
    let no_cert = mesh_client(DB, &[&TLS13, &TLS12], None);
    assert_eq!(
        server_alert(db.inbound_addr.unwrap(), &no_cert),
        AlertDescription::CertificateRequired
    );
    eventually("no_client_certificate counted", || {
        db.metrics
            .inbound
            .handshake_failures
            .of(HandshakeFailure::NoClientCertificate)
            .get()
            == 1
    });
    assert_eq!(db.metrics.inbound.handshake_failures.get(), 1);
}

/// The alert with which db's inbound listener refused this client. Under TLS 1.3 a client
/// finishes its side of the handshake before the server has checked its certificate, so the
/// refusal may come with the first read instead; either way the app never answers.
fn server_alert(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> AlertDescription {
    let err = match tls_connect(addr, &DB.sni(), cfg) {
        Err(e) => e,
        Ok(mut tls) => {
            let _ = tls.write_all(b"let me in");
            let mut buf = [0u8; 64];
            match tls.read(&mut buf) {
                Ok(n) => panic!("the inbound listener answered ({n} bytes)"),
                Err(e) => e,
            }
        }
    };
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => *alert,
        _ => panic!("not refused by the server: {err}"),
    }
}

/// TLS 1.2 is the inbound listener's floor. The same openssl client with web's valid
/// certificate is refused by the server when it speaks TLS 1.1 (counted as a protocol
/// failure) and served when it speaks TLS 1.2; a rustls caller limited to TLS 1.2 reaches the
/// app, half-close included.
#[test]
fn inbound_refuses_tls_1_1_and_serves_tls_1_2() {
    let db = DB.inbound(answer_after_eof("db"), "");
    let db_in = db.inbound_addr.unwrap();
    let protocol_failures = || {
        db.metrics
            .inbound
            .handshake_failures
            .of(HandshakeFailure::Protocol)
            .get()
    };

    let (served, said) = s_client(db_in, "-tls1_1");
    assert!(!served, "TLS 1.1 was served:\n{said}");
    // The server's alert, not a refusal of openssl's own making.
    assert!(said.contains("SSL alert number"), "{said}");
    eventually("the TLS 1.1 caller counted as a protocol failure", || {
        protocol_failures() == 1
    });

    let (served, said) = s_client(db_in, "-tls1_2");
    assert!(served, "TLS 1.2 was refused:\n{said}");
    assert!(said.contains("Protocol version: TLSv1.2"), "{said}");

    let tls12 = mesh_client(DB, &[&TLS12], Some(WEB));
    let tls = tls_connect(db_in, &DB.sni(), &tls12).unwrap();
    assert_eq!(tls.conn.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    half_close_exchange(tls, |s| finish_sending(s).unwrap(), "db");
    assert_eq!(db.metrics.inbound.handshake_failures.get(), 1);
}

/// A caller whose request and close_notify leave in the same write as its Finished has its
/// request delivered and its half-close passed on, and gets the app's whole answer: the
/// inbound handshake ends with the caller already finished sending.
#[test]
fn a_request_sent_with_the_callers_finished_reaches_the_app() {
    let db = DB.inbound(answer_after_eof("db"), "");
    let mut sock = TcpStream::connect(db.inbound_addr.unwrap()).unwrap();
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let name = rustls::pki_types::ServerName::try_from(DB.sni()).unwrap();
    let mut conn =
        rustls::ClientConnection::new(mesh_client(DB, &[&TLS13], Some(WEB)), name).unwrap();
    // The handshake up to the client's Finished, which stays queued.
    while conn.is_handshaking() {
        if conn.wants_write() {
            conn.write_tls(&mut sock).unwrap();
        } else {
            conn.read_tls(&mut sock).unwrap();
            conn.process_new_packets().unwrap();
        }
    }
    let request = b"a short request".repeat(40);
    conn.writer().write_all(&request).unwrap();
    conn.send_close_notify();
    let mut flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut flight).unwrap();
    }
    sock.write_all(&flight).unwrap();
    let mut answer = Vec::new();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.read_to_end(&mut answer).unwrap();
    let line = format!("db read {} bytes", request.len());
    assert!(
        answer.starts_with(line.as_bytes()),
        "the app did not get the request and its end: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(60)])
    );
    assert_eq!(db.metrics.inbound.handshake_failures.get(), 0);
}

/// `openssl s_client` with web's certificate and this version flag against `addr`: whether
/// the handshake succeeded, and what it said.
fn s_client(addr: SocketAddr, version: &str) -> (bool, String) {
    let out = Command::new("openssl")
        // Security level 0: OpenSSL 3 may otherwise refuse to offer TLS 1.1 at all, and the
        // test would pass without a ClientHello ever reaching sidegate.
        .args([
            "s_client",
            "-brief",
            version,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ])
        .args(["-connect", &addr.to_string(), "-servername", &DB.sni()])
        .args([
            "-cert",
            &fixture("web.pem"),
            "-key",
            &fixture("web-key-sec1.pem"),
        ])
        .args(["-CAfile", &fixture("ca.pem")])
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed by the test command");
    let said = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
    (out.status.success(), said.into_owned())
}

/// A caller that sends no SNI, as Consul's built-in proxy does, is served like any other:
/// rustls sends no SNI when the server name is an IP address.
#[test]
fn a_caller_without_sni_reaches_the_app() {
    let db = DB.inbound(answer_after_eof("db"), "");
    let cfg = client_config(&WEB.identity(), &DB.spiffe_id()).unwrap();
    let tls = tls_connect(db.inbound_addr.unwrap(), "127.0.0.1", &cfg).unwrap();
    half_close_exchange(tls, |s| finish_sending(s).unwrap(), "db");
    assert_eq!(db.metrics.inbound.handshake_failures.get(), 0);
    assert_eq!(db.metrics.inbound.denied.get(), 0);
}

/// Two places, every hop a sidegate: web in dc1/default, db in dc1/part2 behind its own
/// gateway. `local` goes web → dc1/default's gateway (LAN) → part2's gateway (WAN) → db;
/// `remote` goes web → part2's gateway (WAN) → db. The SNI and the identity checked are db's
/// in both: the gateways never decrypt.
#[test]
fn local_and_remote_modes_cross_partitions_through_gateways() {
    let db = db_inbound("");
    let db_in = db.inbound_addr.unwrap();
    let part2_gw = start(&format!(
        "[mesh]\ndatacenter = \"dc1\"\npartition = \"part2\"\ntrust_domain = \"{TD}\"\n[gateway]\nlisten = [\"127.0.0.1:0\"]\n\
         [[catalog.services]]\nname = \"db\"\ninstances = [\"{db_in}\"]\n"
    ));
    let part2_wan = part2_gw.gateway_addrs[0];
    let local_gw = start(&format!(
        "[mesh]\ndatacenter = \"dc1\"\ntrust_domain = \"{TD}\"\n[gateway]\nlisten = [\"127.0.0.1:0\"]\n\
         [[catalog.gateways]]\npartition = \"part2\"\nwan = [\"{part2_wan}\"]\n"
    ));
    let local_lan = local_gw.gateway_addrs[0];
    let (local_port, remote_port) = (free_port(), free_port());
    let web = start(&format!(
        r#"{}
{}{}[[catalog.gateways]]
lan = ["{local_lan}"]
[[catalog.gateways]]
partition = "part2"
wan = ["{part2_wan}"]
"#,
        WEB.header(),
        db_upstream(
            &format!("local_bind_port = {local_port}"),
            r#"mesh_gateway = { mode = "local" }"#
        ),
        db_upstream(
            &format!("local_bind_port = {remote_port}"),
            r#"mesh_gateway = { mode = "remote" }"#
        ),
    ));

    // local mode: 100 MB each way (less under emulation), intact, with half-close at the end.
    let payload: Vec<u8> = (0..bulk_bytes(100_000_000) as u32)
        .map(|i| (i % 241) as u8)
        .collect();
    let tcp = TcpStream::connect(("127.0.0.1", local_port)).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT * 6)).unwrap();
    let got = exchange(tcp.try_clone().unwrap(), tcp, &payload, shut_tcp);
    assert!(
        got.len() == payload.len() + 7 && got[..payload.len()] == payload[..],
        "got {} bytes",
        got.len()
    );
    assert_eq!(&got[payload.len()..], b"app:db\n");
    assert_eq!(routed(&local_gw), 1);
    assert_eq!(routed(&part2_gw), 1);

    // remote mode: straight to part2's gateway; the local gateway is not used.
    let tcp = TcpStream::connect(("127.0.0.1", remote_port)).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let got = exchange(tcp.try_clone().unwrap(), tcp, b"remote", shut_tcp);
    assert_eq!(got, b"remoteapp:db\n");
    assert_eq!(routed(&local_gw), 1);
    assert_eq!(routed(&part2_gw), 2);
    assert_eq!(web.metrics.upstream.handshake_failures.get(), 0);
}
