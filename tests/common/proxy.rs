//! Helpers of the data-path tests (tests/proxy): gateway configurations, a second
//! datacenter's gateway to route to, raw connections, and what a refused local app sees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};

use super::{service_sni, start, Backend, Pki, IO_TIMEOUT, TD};

/// One listener on a loopback port chosen by the kernel.
pub const LOOPBACK: &str = "\"127.0.0.1:0\"";

/// A gateway configuration for (dc, partition) with its own services, extra `[gateway]` keys
/// and `[[catalog.gateways]]` entries of other places. Connect timeout 2 s unless `extra`
/// sets one.
pub fn gateway_toml(
    dc: &str,
    partition: &str,
    listen: &str,
    services: &[(&str, Vec<SocketAddr>)],
    gateways: &str,
    extra: &str,
) -> String {
    let connect = if extra.contains("connect_timeout_ms") {
        ""
    } else {
        "connect_timeout_ms = 2000"
    };
    let mut t = format!(
        "[mesh]\ndatacenter = \"{dc}\"\npartition = \"{partition}\"\ntrust_domain = \"{TD}\"\n\
         [gateway]\nlisten = [{listen}]\n{connect}\n{extra}\n{gateways}\n"
    );
    for (name, addrs) in services {
        let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        t += &format!(
            "[[catalog.services]]\nname = \"{name}\"\ninstances = [{}]\n",
            list.join(", ")
        );
    }
    t
}

/// Datacenter dc2's gateway (a sidegate) in front of dc2's `web`: the far end of a
/// cross-datacenter route.
pub fn dc2_gateway_with_web(pki: &Pki) -> (Backend, sidegate::proxy::Running) {
    let web = Backend::start(pki, &service_sni("web", "dc2"));
    let gw = start(&gateway_toml(
        "dc2",
        "default",
        LOOPBACK,
        &[("web", vec![web.addr])],
        "",
        "",
    ));
    (web, gw)
}

/// A local app sends `msg` to the listener on `port` and finishes; it must get nothing back
/// (an EOF or a reset): the connection was refused somewhere behind the listener.
pub fn local_app_gets_nothing(port: u16, msg: &[u8]) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = tcp.write_all(msg);
    let _ = tcp.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    match tcp.read_to_end(&mut got) {
        Ok(_) => assert!(got.is_empty(), "the app got {got:?}"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// A plain TCP connection with bounded reads.
pub fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// The bytes a bulk-transfer test moves: `native` natively, at most 16 MiB under an emulator.
/// qemu-user emulates every hop's crypto, so 100 MiB each way in three modes took 65 s of the
/// aarch64 run; 16 MiB still fills every buffer and pipe many times over and spans a thousand
/// TLS records, and the native run moves the full amount.
pub fn bulk_bytes(native: u64) -> u64 {
    match super::runner() {
        Some(_) => native.min(16 << 20),
        None => native,
    }
}
