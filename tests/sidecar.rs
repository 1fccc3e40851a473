//! The sidecar's upstream listeners end to end: a local app's plaintext in, mTLS out with our
//! leaf, the target's SNI and exactly the target's identity required of the server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;

use common::*;
use sidegate::tls::configs::server_config;
use sidegate::tls::Identity;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn identity(cert: &str, key: &str) -> Identity {
    let read = |n: &str| std::fs::read(fixture(n)).unwrap();
    Identity::from_pem(&read(cert), &read(key), &read("ca.pem")).unwrap()
}

/// `db` in partition part2 of dc1, serving its real mesh leaf and requiring client certificates.
fn db_sidecar() -> Backend {
    Backend::serve(
        server_config(&identity("db.pem", "db-key-pkcs1.pem")).unwrap(),
        "db",
    )
}

/// The web sidecar's config: one TCP and one Unix upstream to `db`, dialled at `instance`.
fn web_sidecar(
    instance: std::net::SocketAddr,
    port: u16,
    socket: &std::path::Path,
) -> sidegate::proxy::Running {
    start(&format!(
        r#"
[mesh]
datacenter = "dc1"
trust_domain = "{TD}"
[tls]
cert_file = "{}"
key_file = "{}"
ca_file = "{}"
[sidecar]
service = "web"
[[sidecar.upstreams]]
destination_name = "db"
destination_partition = "part2"
local_bind_port = {port}
mesh_gateway = {{ mode = "none" }}
[[sidecar.upstreams]]
destination_name = "db"
destination_partition = "part2"
local_bind_socket_path = "{}"
local_bind_socket_mode = "0600"
mesh_gateway = {{ mode = "none" }}
[[catalog.services]]
name = "db"
partition = "part2"
instances = ["{instance}"]
"#,
        fixture("web.pem"),
        fixture("web-key-sec1.pem"),
        fixture("ca.pem"),
        socket.display()
    ))
}

/// Sends `payload`, finishes sending, and returns everything the far side answered.
fn exchange<S: Read + Write>(mut s: S, payload: &[u8], shut: impl FnOnce(&S)) -> Vec<u8> {
    s.write_all(payload).unwrap();
    shut(&s);
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    got
}

fn expected(payload: &[u8]) -> Vec<u8> {
    [payload, b"served-by:db\n"].concat()
}

#[test]
fn local_app_reaches_the_target_over_mtls() {
    let db = db_sidecar();
    let port = dead_addr().port();
    let socket = std::env::temp_dir().join(format!("sidegate-up-{}.sock", std::process::id()));
    let web = web_sidecar(db.addr, port, &socket);

    // TCP: a payload larger than any buffer, then a half-close; the echo and the sign-off
    // after the half-close prove both directions and the half-close crossed mTLS intact.
    let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let got = exchange(tcp, &payload, |s| s.shutdown(Shutdown::Write).unwrap());
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
        exchange(unix, b"over a socket", |s| s
            .shutdown(Shutdown::Write)
            .unwrap()),
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
    let impostor = Backend::serve(
        server_config(&identity("web.pem", "web-key-sec1.pem")).unwrap(),
        "web",
    );
    let port = dead_addr().port();
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
