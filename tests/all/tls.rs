//! TLS on every broker-backed link: each link's own private server, serving
//! only TLS and requiring a client certificate, carries a round trip through
//! a guest; the same link without the client certificate, or without the
//! CA that signed the server's certificate, is refused. The TLS settings are
//! checked when the runtime config loads. Kafka's private server (tansu)
//! has no TLS of its own: a TLS front of the test's stands before it.

use crate::links::{PrivateServer, app_on, served_while_away};
use crate::manifest::{assert_error, runtime_config_errors};
use crate::support::*;
use messaging_provider::broker::LinkRegistry;
use messaging_provider::manifest::RuntimeConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};

/// A test CA, a server certificate for `localhost` and `127.0.0.1`, and a
/// client certificate, as PEM files in one directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The client side's TLS settings: the CA, and the client certificate
    /// unless `client` is false.
    fn settings(&self, client: bool) -> String {
        let mut s = format!("ca_file = {:?}\n", self.path("ca.pem"));
        if client {
            s += &format!(
                "cert_file = {:?}\nkey_file = {:?}\n",
                self.path("client.pem"),
                self.path("client.key")
            );
        }
        s
    }
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();

        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "trigger-messaging test CA");
        write("ca.pem", ca.self_signed(&ca_key).unwrap().pem());
        let issuer = Issuer::new(ca, ca_key);

        for (name, names, usage) in [
            (
                "server",
                vec!["localhost".to_string(), "127.0.0.1".to_string()],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                "client",
                vec!["client.test".to_string()],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            write(
                &format!("{name}.pem"),
                params.signed_by(&key, &issuer).unwrap().pem(),
            );
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Pki { dir }
    })
}

/// An event published on the link's `feed` reaches the guest over the link
/// and comes back on the local `results` channel.
pub(crate) async fn round_trip(settings: &str) {
    let base = unique("tls");
    let (app, rc) = app_on(settings, &base);
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let mut results = watch(&provider, "linkapp", "results").await;
    let app = provider.app("linkapp").unwrap().clone();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    app.publish_external("feed", event("over-tls", "t"))
        .await
        .unwrap();
    results.next_with_id("over-tls").await;
}

/// The link cannot get through the server's TLS: the provider starts (the
/// link keeps retrying), publishing to it fails fast, and the app's other
/// channels are served.
pub(crate) async fn refused(settings: &str) {
    let (app, rc) = app_on(settings, "tls.refused");
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let mut results = watch(&provider, "linkapp", "results").await;
    let app = provider.app("linkapp").unwrap().clone();
    served_while_away(&provider, &app, &mut results, "refused").await;
}

/// The round trip with the CA and the client certificate; refusal without
/// either. `link` is the link's type and URL settings.
async fn mutual_tls(link: &str) {
    let pki = pki();
    round_trip(&format!("{link}{}", pki.settings(true))).await;
    let quick = "publish_timeout = \"1s\"\n";
    refused(&format!("{link}{quick}{}", pki.settings(false))).await;
    refused(&format!("{link}{quick}")).await;
}

fn nats_tls_server(port: u16, _: &Path) -> Command {
    let pki = pki();
    let mut c = Command::new("/usr/sbin/nats-server");
    c.args(["-a", "127.0.0.1", "-p", &port.to_string(), "--tlsverify"])
        .arg("--tlscert")
        .arg(pki.path("server.pem"))
        .arg("--tlskey")
        .arg(pki.path("server.key"))
        .arg("--tlscacert")
        .arg(pki.path("ca.pem"));
    c
}

fn redis_tls_server(port: u16, dir: &Path) -> Command {
    let pki = pki();
    let mut c = Command::new("redis-server");
    c.args(["--bind", "127.0.0.1", "--port", "0", "--tls-port"])
        .arg(port.to_string())
        .arg("--tls-cert-file")
        .arg(pki.path("server.pem"))
        .arg("--tls-key-file")
        .arg(pki.path("server.key"))
        .arg("--tls-ca-cert-file")
        .arg(pki.path("ca.pem"))
        .args([
            "--tls-auth-clients",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir);
    c
}

fn mosquitto_tls_server(port: u16, dir: &Path) -> Command {
    let pki = pki();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings true\nlistener {port} 127.0.0.1\nallow_anonymous true\n\
             cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            pki.path("ca.pem").display(),
            pki.path("server.pem").display(),
            pki.path("server.key").display()
        ),
    )
    .unwrap();
    let mut c = Command::new("mosquitto");
    c.arg("-c").arg(conf);
    c
}

/// A private RabbitMQ node whose AMQP listener (the server's port) speaks
/// only TLS; its plain listener is on the next port.
fn rabbitmq_tls_server(port: u16, dir: &Path) -> Command {
    let pki = pki();
    let conf = dir.join("rabbitmq.conf");
    std::fs::write(
        &conf,
        format!(
            "listeners.ssl.default = {port}\n\
             ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n",
            pki.path("ca.pem").display(),
            pki.path("server.pem").display(),
            pki.path("server.key").display()
        ),
    )
    .unwrap();
    let mut c = crate::amqp::rabbitmq(port, dir);
    c.env("RABBITMQ_NODE_PORT", (port + 1).to_string())
        .env("RABBITMQ_CONFIG_FILE", conf);
    c
}

#[tokio::test]
async fn nats_over_mutual_tls() {
    let server = PrivateServer::start(nats_tls_server);
    mutual_tls(&format!(
        "type = \"nats\"\nurl = \"tls://127.0.0.1:{}\"\n",
        server.port
    ))
    .await;
}

#[tokio::test]
async fn redis_over_mutual_tls() {
    let server = PrivateServer::start(redis_tls_server);
    mutual_tls(&format!(
        "type = \"redis\"\nurl = \"rediss://127.0.0.1:{}\"\n",
        server.port
    ))
    .await;
}

#[tokio::test]
async fn mqtt_over_mutual_tls() {
    let server = PrivateServer::start(mosquitto_tls_server);
    mutual_tls(&format!(
        "type = \"mqtt\"\nurl = \"mqtts://127.0.0.1:{}\"\n",
        server.port
    ))
    .await;
}

#[tokio::test]
async fn mqtt_3_1_1_over_mutual_tls() {
    let server = PrivateServer::start(mosquitto_tls_server);
    mutual_tls(&format!(
        "type = \"mqtt\"\nversion = \"3.1.1\"\nurl = \"mqtts://localhost:{}\"\n",
        server.port
    ))
    .await;
}

#[tokio::test]
async fn amqp_over_mutual_tls() {
    let server = PrivateServer::start(rabbitmq_tls_server);
    mutual_tls(&format!(
        "type = \"amqp\"\nurl = \"amqps://guest:guest@localhost:{}/%2f\"\n",
        server.port
    ))
    .await;
}

/// Where the private tansu behind the TLS front says it is: the front.
static KAFKA_FRONT: AtomicU16 = AtomicU16::new(0);

fn tansu_behind_the_front(port: u16, dir: &Path) -> Command {
    crate::kafka::tansu(port, KAFKA_FRONT.load(Ordering::SeqCst), dir)
}

/// tansu, the Kafka-protocol broker here, has no TLS (0.6.0 takes `--cert`
/// and `--key` and still serves plain TCP). This front, the test's own,
/// serves only TLS on `port` with the server certificate, requires a client
/// certificate signed by the test CA, and passes the bytes on to `backend`.
fn tls_front(port: u16, backend: u16) -> tokio::task::JoinHandle<()> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pki = pki();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.path("ca.pem")).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_file(pki.path("server.pem")).unwrap()],
            PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client without a valid certificate ends here.
                let Ok(mut client) = acceptor.accept(client).await else {
                    return;
                };
                if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    })
}

/// Kafka over TLS with a client certificate, through the front above: the
/// link's `tls`, `ca_file`, `cert_file` and `key_file` reach librdkafka, which
/// checks the server's certificate against the CA and the address.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_over_mutual_tls() {
    let front = free_port();
    KAFKA_FRONT.store(front, Ordering::SeqCst);
    let server = PrivateServer::start(tansu_behind_the_front);
    let _front = tls_front(front, server.port);
    mutual_tls(&format!(
        "type = \"kafka\"\nbrokers = [\"127.0.0.1:{front}\"]\nreplication_factor = 1\ntls = true\n"
    ))
    .await;
}

/// TLS files are read when the config loads: relative paths are taken from
/// the runtime config's directory, and every mistake is reported at its key.
#[test]
fn tls_settings_are_checked_when_the_config_loads() {
    let pki = pki();
    let rc = pki.path("relative.toml");
    std::fs::write(
        &rc,
        "[messaging_link.a]\ntype = \"amqp\"\nurl = \"amqps://localhost\"\n\
         ca_file = \"ca.pem\"\ncert_file = \"client.pem\"\nkey_file = \"client.key\"\n",
    )
    .unwrap();
    RuntimeConfig::load(Some(&rc), &LinkRegistry::default()).unwrap();

    let (f, errors) = runtime_config_errors(
        "[messaging_link.a]\ntype = \"redis\"\nurl = \"rediss://h\"\nca_file = \"no-such.pem\"\n",
    );
    let missing = f.path().parent().unwrap().join("no-such.pem");
    assert_error(
        &errors,
        f.path(),
        "messaging_link.a.ca_file",
        4,
        &format!("cannot read `{}`", missing.display()),
    );

    let cert = pki.path("client.pem");
    let (f, errors) = runtime_config_errors(&format!(
        "[messaging_link.a]\ntype = \"nats\"\ncert_file = {cert:?}\n"
    ));
    assert_error(
        &errors,
        f.path(),
        "messaging_link.a.cert_file",
        3,
        "needs `key_file` too",
    );

    let (f, errors) = runtime_config_errors(&format!(
        "[messaging_link.a]\ntype = \"mqtt\"\nurl = \"mqtts://h\"\n\
         cert_file = {cert:?}\nkey_file = {cert:?}\n"
    ));
    assert_error(
        &errors,
        f.path(),
        "messaging_link.a.key_file",
        5,
        "holds no PEM private key",
    );

    let key = pki.path("client.key");
    let (f, errors) = runtime_config_errors(&format!(
        "[messaging_link.a]\ntype = \"amqp\"\nca_file = {key:?}\nurl = \"amqps://h\"\n"
    ));
    assert_error(
        &errors,
        f.path(),
        "messaging_link.a.ca_file",
        3,
        "holds no PEM certificate",
    );

    for (link, scheme) in [("redis", "rediss"), ("amqp", "amqps"), ("mqtt", "mqtts")] {
        let (f, errors) = runtime_config_errors(&format!(
            "[messaging_link.a]\ntype = \"{link}\"\n{}",
            pki.settings(false)
        ));
        assert_error(
            &errors,
            f.path(),
            "messaging_link.a.ca_file",
            3,
            &format!("TLS files need `url` to start with {scheme}://"),
        );
    }

    let (f, errors) =
        runtime_config_errors("[messaging_link.a]\ntype = \"mqtt\"\nurl = \"wss://h\"\n");
    assert_error(
        &errors,
        f.path(),
        "messaging_link.a.url",
        3,
        "must start with mqtt:// or mqtts://",
    );
}
