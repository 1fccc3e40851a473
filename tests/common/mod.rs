//! Real parts for integration tests: a CA, TLS backends that each hold only their own name's
//! certificate (so a mis-routed connection fails its handshake), TLS clients, and sidegate
//! itself started in-process on port 0.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod apps;
pub mod sidecars;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

pub const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

/// Every socket operation in tests is bounded in time.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subjects: OpenSSL takes a leaf whose subject equals its issuer for
        // self-signed, and rcgen gives both the same default name.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sidegate test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { issuer }
    }

    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for exactly these names, and its key.
    fn leaf(&self, names: &[String]) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.to_vec()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].as_str());
        (params.signed_by(&key, &self.issuer).unwrap(), key)
    }

    /// A leaf for these names as PEM (certificate, key), for servers that read files.
    pub fn leaf_pem(&self, names: &[String]) -> (String, String) {
        let (cert, key) = self.leaf(names);
        (cert.pem(), key.serialize_pem())
    }

    /// A mesh leaf as PEM (certificate, key): this SPIFFE ID as its only (URI) SAN, valid
    /// from now until `not_after`.
    pub fn spiffe_leaf_pem(
        &self,
        spiffe_id: &str,
        not_after: std::time::SystemTime,
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(spiffe_id.try_into().unwrap())];
        params.not_before = std::time::SystemTime::now().into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A server config holding a certificate for exactly these names.
    pub fn server_config(&self, names: &[String]) -> Arc<ServerConfig> {
        let (cert, key) = self.leaf(names);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        Arc::new(cfg)
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.issuer.der().to_vec()))
            .unwrap();
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    }
}

/// A TLS server for one name. Per connection: echoes every byte until the client finishes
/// sending, then says `served-by:<name>` and closes. Runs until the test process ends.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub accepted: Arc<AtomicUsize>,
}

impl Backend {
    pub fn start(pki: &Pki, name: &str) -> Backend {
        Self::start_with(pki, name, &[])
    }

    /// A backend whose certificate also names `aliases`.
    pub fn start_with(pki: &Pki, name: &str, aliases: &[String]) -> Backend {
        let mut names = vec![name.to_owned()];
        names.extend_from_slice(aliases);
        Self::serve(pki.server_config(&names), name)
    }

    /// A backend with a given TLS configuration (e.g. a mesh leaf requiring client certificates).
    pub fn serve(cfg: Arc<ServerConfig>, name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (count, owned_name) = (accepted.clone(), name.to_owned());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let (cfg, name) = (cfg.clone(), owned_name.clone());
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        let _ = serve_echo(stream, cfg, &name);
                    })
                    .unwrap();
            }
        });
        Backend {
            addr,
            name: name.to_owned(),
            accepted,
        }
    }

    /// `db` of dc1 whose certificate also covers its `v2` subset name, as a sidecar serving
    /// subsets would hold.
    pub fn db_with_subset(pki: &Pki) -> Backend {
        let name = service_sni("db", "dc1");
        Self::start_with(pki, &name, &[format!("v2.{name}")])
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn serve_echo(stream: TcpStream, cfg: Arc<ServerConfig>, name: &str) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let conn = ServerConnection::new(cfg).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, stream);
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            // curl: answer one HTTP request with our name, so it can be checked.
            Ok(n) if first && buf[..n].starts_with(b"GET ") => {
                let body = format!("served-by:{name}\n");
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                tls.write_all(format!("{head}{body}").as_bytes())?;
                tls.conn.send_close_notify();
                tls.flush()?;
                return Ok(());
            }
            Ok(n) => {
                first = false;
                tls.write_all(&buf[..n])?;
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    tls.write_all(format!("served-by:{name}\n").as_bytes())?;
    tls.conn.send_close_notify();
    tls.flush()?;
    let _ = tls.sock.shutdown(Shutdown::Write);
    Ok(())
}

pub type Client = StreamOwned<ClientConnection, TcpStream>;

/// Connects through `addr` with SNI `sni` (an IP address as `sni` sends none) and completes
/// the handshake, verifying the server's certificate against the test CA for that name.
pub fn tls_connect(addr: SocketAddr, sni: &str, cfg: &Arc<ClientConfig>) -> io::Result<Client> {
    let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let name = ServerName::try_from(sni.to_owned()).map_err(io::Error::other)?;
    let conn = ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Sends `msg`, reads the echo, then finishes sending (close_notify and a TCP half-close)
/// and reads the backend's sign-off. Returns the backend's name.
pub fn echo_and_finish(mut tls: Client, msg: &[u8]) -> io::Result<String> {
    tls.write_all(msg)?;
    let mut echoed = vec![0u8; msg.len()];
    tls.read_exact(&mut echoed)?;
    if echoed != msg {
        return Err(io::Error::other("echo differs"));
    }
    finish_sending(&mut tls)?;
    let mut rest = String::new();
    match tls.read_to_string(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e),
    }
    rest.trim_end()
        .strip_prefix("served-by:")
        .map(str::to_owned)
        .ok_or_else(|| io::Error::other(format!("no sign-off, got {rest:?}")))
}

/// Finishes sending on a TLS client as a well-behaved one does: close_notify, then a TCP
/// half-close; the far side may still answer.
pub fn finish_sending(tls: &mut Client) -> io::Result<()> {
    tls.conn.send_close_notify();
    tls.flush()?;
    tls.sock.shutdown(Shutdown::Write)
}

pub fn service_sni(service: &str, dc: &str) -> String {
    format!("{service}.default.{dc}.internal.{TD}")
}

/// A `sidegate run` child process, killed when dropped.
pub struct Child {
    pub child: std::process::Child,
    pub gateway_addrs: Vec<SocketAddr>,
    /// Every line it has logged so far.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Child {
    /// Lines logged so far that contain `needle`.
    pub fn logged(&self, needle: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).count()
    }

    /// The address after `prefix` in the first line that has it (e.g. `admin endpoint
    /// listening on `), waiting for that line.
    pub fn logged_addr(&self, prefix: &str) -> SocketAddr {
        eventually(prefix, || self.logged(prefix) > 0);
        let log = self.log.lock().unwrap();
        let line = log.iter().find(|l| l.contains(prefix)).unwrap();
        let rest = line.split(prefix).nth(1).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }
}

/// What a serving process logs last: the admin endpoint is bound after every listener.
pub const ADMIN_LISTENING: &str = "admin endpoint listening on ";

impl Child {
    /// Waits until the process serves, and returns its admin endpoint's address (its config
    /// needs `[admin]`); `None` when it exited first (e.g. a port it names was taken).
    pub fn serving(&mut self) -> Option<SocketAddr> {
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        while self.logged(ADMIN_LISTENING) == 0 {
            if self.child.try_wait().unwrap().is_some() {
                return None;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sidegate did not start serving: {:#?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Some(self.logged_addr(ADMIN_LISTENING))
    }
}

/// One sample of an admin endpoint's `/metrics`, named with its labels as written there,
/// e.g. `sidegate_connections_accepted_total{role="inbound"}`.
pub fn metric(admin: SocketAddr, sample: &str) -> u64 {
    let (code, text) = http_get(admin, "/metrics");
    assert_eq!(code, 200);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"));
    line.parse().unwrap()
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `sidegate` binary as a command. When the tests run under emulation (cross/test.sh), the
/// binary is built for another architecture that the kernel cannot exec without binfmt_misc
/// (absent in containers and CI), so it is started through the runner cargo itself uses for
/// this target: `CARGO_TARGET_<TRIPLE>_RUNNER`, inherited from the environment. Every test that
/// starts the binary goes through here (or `sidegate_argv`).
pub fn sidegate_command() -> std::process::Command {
    command_for(std::path::Path::new(env!("CARGO_BIN_EXE_sidegate")))
}

/// The program and leading arguments that start `sidegate`, for helpers that build their own
/// command line (e.g. under a watchdog shell).
pub fn sidegate_argv() -> Vec<String> {
    argv_for(std::path::Path::new(env!("CARGO_BIN_EXE_sidegate")))
}

/// A command running `bin`, a program built for the tests' target, through that target's
/// runner when one is set.
pub fn command_for(bin: &std::path::Path) -> std::process::Command {
    let argv = argv_for(bin);
    let mut command = std::process::Command::new(&argv[0]);
    command.args(&argv[1..]);
    command
}

/// The runner's words (if any), then `bin`.
pub fn argv_for(bin: &std::path::Path) -> Vec<String> {
    private_fixture_keys();
    let runner = runner().unwrap_or_default();
    let mut argv: Vec<String> = runner.split_whitespace().map(str::to_owned).collect();
    argv.push(bin.to_string_lossy().into_owned());
    argv
}

/// Git keeps no file modes but the executable bit, so a checkout leaves the fixtures' private
/// keys readable by everyone, and `check` warns about such a key file. Keys are 0600 where
/// they are kept properly; the fixtures are made so before the binary reads them.
pub fn private_fixture_keys() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with("-key.pem")
                || name.to_string_lossy().contains("-key-")
            {
                let _ =
                    std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600));
            }
        }
    });
}

/// The runner (emulator) of the tests' target, when they run under one.
pub fn runner() -> Option<String> {
    let var = format!(
        "CARGO_TARGET_{}_RUNNER",
        env!("SIDEGATE_TARGET")
            .replace(['-', '.'], "_")
            .to_uppercase()
    );
    std::env::var(var).ok().filter(|r| !r.trim().is_empty())
}

/// Runs the real binary on a config file and waits until it says every gateway listener is
/// bound (it logs `gateway listening on ADDR` once per listener).
pub fn run_binary(config: &std::path::Path, listeners: usize) -> Child {
    run_binary_with(&[], &[], config, listeners)
}

/// `run_binary` started through `wrapper` (e.g. `prlimit --nofile=64:64 --`, which execs it in
/// the same process) with extra environment variables.
pub fn run_binary_with(
    wrapper: &[&str],
    env: &[(&str, &str)],
    config: &std::path::Path,
    listeners: usize,
) -> Child {
    use std::io::BufRead;
    // The wrapper first, then the runner when emulated (tests/common: sidegate_argv).
    let argv: Vec<String> = wrapper
        .iter()
        .map(|w| (*w).to_owned())
        .chain(sidegate_argv())
        .collect();
    let mut command = std::process::Command::new(&argv[0]);
    command.args(&argv[1..]);
    let mut child = command
        .args(["run", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(addr) = line.split("gateway listening on ").nth(1) {
                let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
            }
            kept.lock().unwrap().push(line);
        }
    });
    let gateway_addrs = (0..listeners)
        .map(|_| rx.recv_timeout(IO_TIMEOUT).expect("sidegate did not start"))
        .collect();
    Child {
        child,
        gateway_addrs,
        log,
    }
}

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

/// Starts sidegate in-process from configuration text.
pub fn start(toml: &str) -> sidegate::proxy::Running {
    let config = sidegate::config::parse(toml).unwrap_or_else(|e| panic!("config: {e:?}"));
    sidegate::proxy::start(sidegate::mesh::plan(&config.snapshot)).unwrap()
}

/// A free loopback port for a listener a configuration must name (`local_bind_port` cannot
/// be 0). It comes from below the kernel's ephemeral range (32768 and up by default), so the
/// local end of some test's outgoing connection cannot take it before sidegate binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    loop {
        // Spread by process so that test binaries running at once rarely probe the same ports.
        let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() * 97;
        let port = u16::try_from(FIRST + n % SPAN).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A port on which nothing listens (bound, then released).
pub fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Polls `cond` until it holds or a deadline passes; for counters updated by the gateway
/// thread after the client already saw the close.
pub fn eventually(what: &str, cond: impl Fn() -> bool) {
    eventually_within(IO_TIMEOUT, what, cond);
}

/// `eventually` with a deadline of its own, for waits that scale with a test's size.
pub fn eventually_within(limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
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

/// The gateway closed the connection: a read ends (EOF or reset) without any data.
pub fn assert_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("got {n} bytes from a refused connection"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "expected a close, got {e}"
        ),
    }
}

/// Resident memory of process `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `rss_kib` once it stops falling: memory a process frees just after a burst (buffers of
/// connections still in flight when the burst's last one was seen) is not its steady
/// state. Readings 250 ms apart, for at most 5 s.
pub fn settled_rss_kib(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let now = rss_kib(pid);
        if now >= last {
            return last;
        }
        last = now;
    }
    last
}

/// One GET to sidegate's admin endpoint: (status code, body).
pub fn http_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect_timeout(&admin, IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: sidegate\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

/// A scratch directory under cargo's target tmp dir, removed when dropped.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes a FIFO (named pipe) at `path`: where a regular file belongs, it must be refused
/// before anything blocks on it.
pub fn make_fifo(path: &std::path::Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}
