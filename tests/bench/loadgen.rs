//! Benchmark load generator: the TLS backend *and* the load client, so that every proxy under
//! test (sidegate, HAProxy, sniproxy, nginx, stunnel) and the direct path are measured with
//! exactly the same endpoints. Driven by `tests/bench/run.sh`.
//!
//! ```text
//! loadgen certs   [--cert-dir DIR] --client-spiffe URI
//! loadgen backend --listen 127.0.0.1:P --name SNI [--spiffe URI]
//! loadgen bulk    --connect ADDR --sni NAME [--client tls|mtls|plain] [--bytes N] [--conns K] [--dir up|down|both]
//! loadgen rate    --connect ADDR --sni NAME [--client ...] [--seconds S] [--parallel K]
//! loadgen latency --connect ADDR --sni NAME [--client ...] [--seconds S] [--setup-seconds S]
//! loadgen hold    --connect ADDR --sni NAME [--client ...] [--count 1000] [--parallel K] [--timeout-secs T]
//! ```
//!
//! The CA lives in `--cert-dir` (default `target/bench/certs`): `certs` and the backend create
//! `ca.pem` and `ca-key.pem` there if missing and reuse them otherwise; clients trust `ca.pem`,
//! so every handshake really verifies a chain for the SNI (a mis-route fails). Full handshakes
//! only: client resumption and server tickets are off.
//!
//! Two backends: for SNI passthrough a TLS server for `--name`; with `--spiffe` an mTLS server
//! like a mesh sidecar's public listener: its leaf also carries the SPIFFE URI SAN, and a client
//! certificate chaining to the CA is required. `certs` writes the client's mesh leaf
//! (`client.pem`, `client-key.pem`, and both in `client-combined.pem` for HAProxy).
//!
//! The client speaks `tls` (passthrough: through the proxy to the backend), `mtls` (the direct
//! reference for origination: the client does the mTLS itself) or `plain` (to an originating
//! proxy, which does the mTLS). After its handshake a client sends commands, each a 9-byte
//! header (`op`, u64 BE `n`): `E` echo n bytes back, `S` sink n bytes then answer the u64
//! count, `O` source n bytes. At EOF the backend sends close_notify and closes.
//!
//! Each client command prints one machine-readable `RESULT key=value ...` line on stdout.
//! Every socket operation has a timeout and every loop is bounded in count or time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, Issuer,
    KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const IO_TIMEOUT: Duration = Duration::from_secs(30);
const CHUNK: usize = 64 * 1024;

fn main() {
    raise_nofile();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        eprintln!("usage: loadgen certs|backend|bulk|rate|latency|hold [options]");
        std::process::exit(64);
    };
    let opts = Opts::parse(&args[1..]);
    let r = match cmd.as_str() {
        "certs" => certs(&opts),
        "backend" => backend(&opts),
        "bulk" => bulk(&opts),
        "rate" => rate(&opts),
        "latency" => latency(&opts),
        "hold" => hold(&opts),
        other => Err(format!("unknown command {other}").into()),
    };
    if let Err(e) = r {
        eprintln!("loadgen {cmd}: {e}");
        std::process::exit(1);
    }
}

/// `--key value` pairs.
struct Opts(Vec<(String, String)>);

impl Opts {
    fn parse(a: &[String]) -> Opts {
        let mut v = Vec::new();
        let mut it = a.iter();
        while let Some(k) = it.next() {
            let Some(k) = k.strip_prefix("--") else {
                eprintln!("loadgen: unexpected argument {k}");
                std::process::exit(64);
            };
            let val = it.next().cloned().unwrap_or_else(|| {
                eprintln!("loadgen: --{k} needs a value");
                std::process::exit(64);
            });
            v.push((k.to_owned(), val));
        }
        Opts(v)
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
    fn req(&self, k: &str) -> Res<&str> {
        self.get(k)
            .ok_or_else(|| format!("--{k} is required").into())
    }
    fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> Res<T> {
        match self.get(k) {
            None => Ok(default),
            Some(s) => s
                .parse()
                .map_err(|_| format!("--{k}: bad number {s:?}").into()),
        }
    }
    fn cert_dir(&self) -> PathBuf {
        PathBuf::from(self.get("cert-dir").unwrap_or("target/bench/certs"))
    }
}

/// 1000 held connections through a proxy need more than the usual 1024 descriptors.
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: l.maximum,
                maximum: l.maximum,
            },
        );
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------- certificates

/// Fixed CA parameters: the issuer can be rebuilt from its stored key alone.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "sidegate bench CA");
    p.distinguished_name = dn;
    p
}

fn load_or_make_ca(dir: &Path) -> Res<Issuer<'static, KeyPair>> {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert.exists() && key.exists() {
        let kp = KeyPair::from_pem(&std::fs::read_to_string(&key)?)?;
        return Ok(Issuer::new(ca_params(), kp));
    }
    std::fs::create_dir_all(dir)?;
    let kp = KeyPair::generate()?;
    let key_pem = kp.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params(), kp)?;
    // Key first, cert last: a client that sees ca.pem sees a complete pair.
    std::fs::write(&key, key_pem)?;
    let tmp = dir.join(format!("ca.pem.{}", std::process::id()));
    std::fs::write(&tmp, ca.pem())?;
    std::fs::rename(&tmp, &cert)?;
    let kp = KeyPair::from_pem(&std::fs::read_to_string(&key)?)?;
    Ok(Issuer::new(ca_params(), kp))
}

fn ia5(s: &str) -> Res<rcgen::string::Ia5String> {
    Ok(rcgen::string::Ia5String::try_from(s.to_owned())?)
}

/// A leaf for `dns` (and `spiffe`, a mesh identity), signed by the bench CA, with its key.
fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    dns: Option<&str>,
    spiffe: Option<&str>,
) -> Res<(rcgen::Certificate, KeyPair)> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    if let Some(d) = dns {
        p.subject_alt_names.push(SanType::DnsName(ia5(d)?));
    }
    if let Some(u) = spiffe {
        p.subject_alt_names.push(SanType::URI(ia5(u)?));
    }
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert, key))
}

fn pkcs8(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

fn roots(dir: &Path) -> Res<RootCertStore> {
    let ca = dir.join("ca.pem");
    let mut roots = RootCertStore::empty();
    let der = CertificateDer::from_pem_file(&ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    roots.add(der)?;
    Ok(roots)
}

/// With `spiffe`, a mesh sidecar's public listener: SPIFFE leaf, client certificate required.
fn server_config(dir: &Path, name: &str, spiffe: Option<&str>) -> Res<Arc<ServerConfig>> {
    let issuer = load_or_make_ca(dir)?;
    let (cert, key) = leaf(&issuer, Some(name), spiffe)?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match spiffe {
        None => builder.with_no_client_auth(),
        Some(_) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(dir)?), provider())
                .build()?,
        ),
    };
    let mut cfg = builder.with_single_cert(vec![cert.der().clone()], pkcs8(&key))?;
    cfg.send_tls13_tickets = 0; // full handshakes only; nothing unrequested on the wire
    Ok(Arc::new(cfg))
}

/// The client's side; `mutual` presents the client leaf written by `certs`.
fn client_config(dir: &Path, mutual: bool) -> Res<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(dir)?);
    let mut cfg = if mutual {
        let cert = CertificateDer::from_pem_file(dir.join("client.pem"))?;
        let key = PrivateKeyDer::from_pem_file(dir.join("client-key.pem"))?;
        builder.with_client_auth_cert(vec![cert], key)?
    } else {
        builder.with_no_client_auth()
    };
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The CA (if missing) and the client's mesh leaf as PEM files, for the originating proxies
/// and the direct mTLS client.
fn certs(o: &Opts) -> Res<()> {
    let dir = o.cert_dir();
    let issuer = load_or_make_ca(&dir)?;
    let (cert, key) = leaf(&issuer, None, Some(o.req("client-spiffe")?))?;
    let cert_pem = cert.pem();
    let key_pem = key.serialize_pem();
    std::fs::write(dir.join("client.pem"), &cert_pem)?;
    std::fs::write(dir.join("client-key.pem"), &key_pem)?;
    std::fs::write(
        dir.join("client-combined.pem"),
        format!("{cert_pem}{key_pem}"),
    )?;
    println!("RESULT certs dir={}", dir.display());
    Ok(())
}

// ---------------------------------------------------------------- backend

fn backend(o: &Opts) -> Res<()> {
    let listen: SocketAddr = o.req("listen")?.parse()?;
    let name = o.req("name")?;
    let spiffe = o.get("spiffe");
    let cfg = server_config(&o.cert_dir(), name, spiffe)?;
    let listener = TcpListener::bind(listen)?;
    let auth = if spiffe.is_some() { "mTLS" } else { "TLS" };
    eprintln!(
        "backend listening on {} for {name} ({auth})",
        listener.local_addr()?
    );
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let cfg = cfg.clone();
        // A thread per connection: simple, and identical for every proxy measured.
        let spawned = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = serve(stream, cfg);
            });
        if spawned.is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

fn serve(stream: TcpStream, cfg: Arc<ServerConfig>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // Held connections sit idle for the whole hold; everything else is busy.
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let conn = ServerConnection::new(cfg).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, stream);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut hdr = [0u8; 9];
        match read_full(&mut tls, &mut hdr) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(e),
        }
        let n = u64::from_be_bytes(hdr[1..].try_into().unwrap());
        match hdr[0] {
            b'E' => {
                let mut left = n;
                while left > 0 {
                    let k = (left as usize).min(CHUNK);
                    if !read_full(&mut tls, &mut buf[..k])? {
                        return Ok(());
                    }
                    tls.write_all(&buf[..k])?;
                    left -= k as u64;
                }
                tls.flush()?;
            }
            b'S' => {
                let mut left = n;
                while left > 0 {
                    let k = (left as usize).min(CHUNK);
                    let got = tls.read(&mut buf[..k])?;
                    if got == 0 {
                        return Ok(());
                    }
                    left -= got as u64;
                }
                tls.write_all(&n.to_be_bytes())?;
                tls.flush()?;
            }
            b'O' => {
                let mut left = n;
                while left > 0 {
                    let k = (left as usize).min(CHUNK);
                    tls.write_all(&buf[..k])?;
                    left -= k as u64;
                }
                tls.flush()?;
            }
            _ => return Err(io::Error::other("bad command")),
        }
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.shutdown(Shutdown::Write);
    Ok(())
}

/// Fills `buf`; `false` on a clean EOF before the first byte.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && got == 0 => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

// ---------------------------------------------------------------- client side

/// A connection to the proxy (or, for direct, to the backend): TLS, or plaintext to an
/// originating proxy.
enum Client {
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    Plain(TcpStream),
}

impl Read for Client {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Client::Tls(t) => t.read(buf),
            Client::Plain(s) => s.read(buf),
        }
    }
}

impl Write for Client {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Client::Tls(t) => t.write(buf),
            Client::Plain(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Client::Tls(t) => t.flush(),
            Client::Plain(s) => s.flush(),
        }
    }
}

struct Target {
    addr: SocketAddr,
    sni: ServerName<'static>,
    /// `None`: plaintext to an originating proxy.
    cfg: Option<Arc<ClientConfig>>,
}

impl Target {
    fn from(o: &Opts) -> Res<Target> {
        let connect = o.req("connect")?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(connect)?
            .next()
            .ok_or("--connect: no address")?;
        let sni = ServerName::try_from(o.req("sni")?.to_owned())?;
        let cfg = match o.get("client").unwrap_or("tls") {
            "tls" => Some(client_config(&o.cert_dir(), false)?),
            "mtls" => Some(client_config(&o.cert_dir(), true)?),
            "plain" => None,
            c => return Err(format!("--client {c}: tls, mtls or plain").into()),
        };
        Ok(Target { addr, sni, cfg })
    }

    /// TCP connect + full handshake (none for plain).
    fn connect(&self) -> io::Result<Client> {
        let sock = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        let Some(cfg) = &self.cfg else {
            return Ok(Client::Plain(sock));
        };
        let conn =
            ClientConnection::new(cfg.clone(), self.sni.clone()).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Client::Tls(Box::new(tls)))
    }
}

fn cmd(c: &mut Client, op: u8, n: u64) -> io::Result<()> {
    let mut hdr = [0u8; 9];
    hdr[0] = op;
    hdr[1..].copy_from_slice(&n.to_be_bytes());
    c.write_all(&hdr)
}

const ECHO: usize = 32;

/// One small request and its answer: header and payload leave in one write (one segment, one
/// TLS record), as a real request would.
fn echo(c: &mut Client) -> io::Result<()> {
    let mut req = [0x42u8; 9 + ECHO];
    req[0] = b'E';
    req[1..9].copy_from_slice(&(ECHO as u64).to_be_bytes());
    c.write_all(&req)?;
    c.flush()?;
    let mut back = [0u8; ECHO];
    if !read_full(c, &mut back)? || back != req[9..] {
        return Err(io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// Half-close (after close_notify over TLS), then wait (bounded by the read timeout) for the
/// backend's own close, so neither side resets and every proxy sees an orderly close.
fn finish(mut c: Client) -> io::Result<()> {
    match &mut c {
        Client::Tls(t) => {
            t.conn.send_close_notify();
            t.flush()?;
            t.sock.shutdown(Shutdown::Write)?;
        }
        Client::Plain(s) => s.shutdown(Shutdown::Write)?,
    }
    let mut sink = [0u8; 256];
    loop {
        match c.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Milliseconds at percentile `p` of sorted microsecond samples.
fn pct_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[i]) / 1000.0
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

fn bulk(o: &Opts) -> Res<()> {
    let t = Arc::new(Target::from(o)?);
    let bytes: u64 = o.num("bytes", 256 << 20)?;
    let conns: usize = o.num("conns", 4)?;
    let dir = o.get("dir").unwrap_or("both").to_owned();
    let (up, down) = match dir.as_str() {
        "up" => (true, false),
        "down" => (false, true),
        "both" => (true, true),
        d => return Err(format!("--dir {d}: up, down or both").into()),
    };
    // Handshakes happen before the clock starts: this measures the data path only.
    let barrier = Arc::new(Barrier::new(conns + 1));
    let mut handles = Vec::new();
    for _ in 0..conns {
        let (t, barrier) = (t.clone(), barrier.clone());
        handles.push(std::thread::spawn(move || -> io::Result<u64> {
            let c = t.connect();
            barrier.wait();
            let mut c = c?;
            let mut buf = vec![0x5au8; CHUNK];
            let mut moved = 0;
            if up {
                cmd(&mut c, b'S', bytes)?;
                let mut left = bytes;
                while left > 0 {
                    let k = (left as usize).min(CHUNK);
                    c.write_all(&buf[..k])?;
                    left -= k as u64;
                }
                c.flush()?;
                let mut ack = [0u8; 8];
                if !read_full(&mut c, &mut ack)? || u64::from_be_bytes(ack) != bytes {
                    return Err(io::Error::other("sink ack mismatch"));
                }
                moved += bytes;
            }
            if down {
                cmd(&mut c, b'O', bytes)?;
                c.flush()?;
                let mut left = bytes;
                while left > 0 {
                    let k = (left as usize).min(CHUNK);
                    let n = c.read(&mut buf[..k])?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    left -= n as u64;
                }
                moved += bytes;
            }
            finish(c)?;
            Ok(moved)
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut total = 0u64;
    let mut errors = 0;
    for h in handles {
        match h.join().map_err(|_| "bulk thread panicked")? {
            Ok(n) => total += n,
            Err(e) => {
                errors += 1;
                eprintln!("bulk: connection failed: {e}");
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mbps = total as f64 / 1e6 / secs;
    println!("RESULT bulk mbps={mbps:.1} bytes={total} secs={secs:.3} conns={conns} dir={dir} errors={errors}");
    if errors > 0 {
        return Err(format!("{errors} of {conns} connections failed").into());
    }
    Ok(())
}

/// New connections per second: `parallel` clients each looping connect + handshake + one
/// echo + orderly close. Setup = connect start → first echo answered.
fn rate(o: &Opts) -> Res<()> {
    let t = Arc::new(Target::from(o)?);
    let seconds: f64 = o.num("seconds", 5.0)?;
    let parallel: usize = o.num("parallel", 8)?;
    let (all, secs, errors) = connect_loop(&t, seconds, parallel)?;
    println!(
        "RESULT rate cps={:.1} conns={} secs={secs:.3} p50_ms={:.3} p99_ms={:.3} errors={errors}",
        all.len() as f64 / secs,
        all.len(),
        pct_ms(&all, 0.50),
        pct_ms(&all, 0.99)
    );
    if all.is_empty() {
        return Err("no connection succeeded".into());
    }
    Ok(())
}

/// Sorted setup latencies (µs), elapsed seconds and errors of a bounded connect loop.
fn connect_loop(t: &Arc<Target>, seconds: f64, parallel: usize) -> Res<(Vec<u32>, f64, u64)> {
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut handles = Vec::new();
    for _ in 0..parallel {
        let (t, errors) = (t.clone(), errors.clone());
        handles.push(std::thread::spawn(move || {
            let mut lat_us: Vec<u32> = Vec::with_capacity(1 << 16);
            while Instant::now() < deadline && errors.load(Ordering::Relaxed) < 1000 {
                let t0 = Instant::now();
                let ok = t.connect().and_then(|mut c| {
                    echo(&mut c)?;
                    let setup = t0.elapsed();
                    finish(c)?;
                    Ok(setup)
                });
                match ok {
                    Ok(setup) => lat_us.push(micros(setup)),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("connect: {e}");
                        }
                    }
                }
            }
            lat_us
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| "connect thread panicked")?);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok((all, secs, errors.load(Ordering::Relaxed)))
}

/// Latency without load: connection setup from one client connecting serially for `seconds`,
/// then the small-request round trip on one established connection for `seconds`.
fn latency(o: &Opts) -> Res<()> {
    let t = Arc::new(Target::from(o)?);
    let seconds: f64 = o.num("seconds", 2.0)?;
    // `--setup-seconds 0` measures round trips only (e.g. to count a proxy's syscalls).
    let setup_seconds: f64 = o.num("setup-seconds", seconds)?;
    let (setup, _, errors) = connect_loop(&t, setup_seconds, 1)?;
    if setup.is_empty() && setup_seconds > 0.0 {
        return Err("no connection succeeded".into());
    }
    let mut c = t.connect()?;
    echo(&mut c)?; // the first answer includes an originating proxy's handshake
    let mut rtt: Vec<u32> = Vec::with_capacity(1 << 16);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline && rtt.len() < 10_000_000 {
        let t0 = Instant::now();
        echo(&mut c)?;
        rtt.push(micros(t0.elapsed()));
    }
    finish(c)?;
    rtt.sort_unstable();
    println!(
        "RESULT latency setup_p50_ms={:.3} setup_p99_ms={:.3} setups={} rtt_p50_ms={:.4} rtt_p99_ms={:.4} rtts={} errors={errors}",
        pct_ms(&setup, 0.50),
        pct_ms(&setup, 0.99),
        setup.len(),
        pct_ms(&rtt, 0.50),
        pct_ms(&rtt, 0.99),
        rtt.len()
    );
    Ok(())
}

fn hold(o: &Opts) -> Res<()> {
    let t = Arc::new(Target::from(o)?);
    let count: usize = o.num("count", 1000)?;
    let parallel: usize = o.num("parallel", 4)?.max(1);
    let timeout: u64 = o.num("timeout-secs", 120)?;
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..parallel {
        let t = t.clone();
        let mine = count / parallel + usize::from(i < count % parallel);
        handles.push(std::thread::spawn(move || {
            let mut held = Vec::with_capacity(mine);
            let mut errors = 0usize;
            for _ in 0..mine {
                // The echo proves the whole path is up (an originating proxy's handshake too).
                match t.connect().and_then(|mut c| echo(&mut c).map(|()| c)) {
                    Ok(c) => held.push(c),
                    Err(e) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("hold: {e}");
                        }
                    }
                }
            }
            (held, errors)
        }));
    }
    let mut held = Vec::with_capacity(count);
    let mut errors = 0;
    for h in handles {
        let (c, e) = h.join().map_err(|_| "hold thread panicked")?;
        held.extend(c);
        errors += e;
    }
    println!(
        "READY held={} errors={errors} secs={:.3}",
        held.len(),
        start.elapsed().as_secs_f64()
    );
    io::stdout().flush()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
        let _ = tx.send(());
    });
    let why = match rx.recv_timeout(Duration::from_secs(timeout)) {
        Ok(()) => "stdin closed",
        Err(_) => "timeout",
    };
    let n = held.len();
    drop(held); // FIN on each; the backend's threads see EOF
    println!("RESULT hold held={n} errors={errors} released_by={why:?}");
    Ok(())
}
