//! The Kafka link beyond the conformance suite: clients that are not ours
//! (confluent-kafka, kafka-python) with the CloudEvents Python SDK's Kafka
//! binding, through a guest, both ways; two processes sharing a queue's
//! partitions; a nack's retry record waiting without holding up the topic;
//! settings and names checked at load; SASL SCRAM against a private broker
//! that requires it; a producer that failed for good replaced.
//!
//! The broker here is tansu (a Kafka-protocol broker, one node, in memory):
//! topics get one replica.

use crate::links::two_processes_share_a_queue;
use crate::support::*;
use messaging_provider::broker::{LinkRegistry, SubscribeMode};
use messaging_provider::cloudevents::Event;
use messaging_provider::manifest::{RuntimeConfig, load_app_with_links};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const LINK: &str = "type = \"kafka\"\nreplication_factor = 1\n";

/// A private tansu listening on `port`, telling clients it is at
/// `advertised` (the same port, unless something stands in front), keeping
/// its data in SQLite under `dir` so that it survives a restart.
pub fn tansu(port: u16, advertised: u16, dir: &Path) -> Command {
    let mut c = Command::new("tansu");
    c.current_dir(dir)
        .arg("broker")
        .arg(format!("--listener-url=tcp://127.0.0.1:{port}"))
        .arg(format!(
            "--advertised-listener-url=tcp://127.0.0.1:{advertised}"
        ))
        .arg("--storage-engine=sqlite://tansu.db");
    c
}

/// A private tansu that survives restarts.
pub fn tansu_server(port: u16, dir: &Path) -> Command {
    tansu(port, port, dir)
}

/// The same, requiring SASL.
fn tansu_with_authentication(port: u16, dir: &Path) -> Command {
    let mut c = tansu(port, port, dir);
    c.arg("--authentication");
    c
}

/// A link on the private SASL broker: SCRAM with `user`'s `password`.
fn sasl_link(port: u16, mechanism: &str, user: &str, password: &str) -> String {
    format!(
        "type = \"kafka\"\nbrokers = [\"127.0.0.1:{port}\"]\nreplication_factor = 1\n\
         sasl_mechanism = \"{mechanism}\"\nuser = \"{user}\"\npassword = \"{password}\"\n"
    )
}

/// SASL SCRAM-SHA-256 and SCRAM-SHA-512 (tansu has no PLAIN) against a
/// broker that lets nothing else in: the users are made while it is open,
/// then it restarts requiring authentication. Each mechanism carries a
/// round trip through a guest; an unknown user is refused, and the
/// provider serves its other channels meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn sasl_scram_users_get_in_and_strangers_do_not() {
    let mut server = crate::links::PrivateServer::start(tansu_server);
    for (user, mechanism) in [("alice", "scram256"), ("bob", "scram512")] {
        let out = Command::new("tansu")
            .args(["user", "create", user, &format!("{user}-secret")])
            .arg(format!("--mechanism={mechanism}"))
            .arg(format!("--broker=tcp://127.0.0.1:{}", server.port))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tansu user create {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    server.stop();
    server.restart_as(tansu_with_authentication);
    for (mechanism, user) in [("SCRAM-SHA-256", "alice"), ("SCRAM-SHA-512", "bob")] {
        let link = sasl_link(server.port, mechanism, user, &format!("{user}-secret"));
        crate::tls::round_trip(&link).await;
    }
    let quick = "publish_timeout = \"1s\"\n";
    for (user, password) in [("mallory", "guess"), ("alice", "guess")] {
        let stranger = sasl_link(server.port, "SCRAM-SHA-256", user, password);
        crate::tls::refused(&format!("{stranger}{quick}")).await;
    }
}

fn kafka_client(args: &[&str]) -> serde_json::Value {
    let out = interop("kafka_client.py", args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kafka_client.py {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

/// Events made by the CloudEvents SDK and produced by confluent-kafka and
/// kafka-python, in binary and structured mode, reach a guest; what it
/// publishes (in the link's mode) is read back by both clients and parsed
/// by the SDK, every attribute, the data and the key intact. (The clients
/// run as blocking child processes: the provider's tasks run on the other
/// worker threads meanwhile.)
#[tokio::test(flavor = "multi_thread")]
async fn other_clients_and_the_cloudevents_sdk_round_trip_through_a_guest() {
    for mode in ["binary", "structured"] {
        let base = unique("kafka.interop");
        let rc = link_config("bus", &format!("{LINK}content_mode = \"{mode}\"\n"));
        let app = write_app(&format!(
            r#"spin_manifest_version = 2
[application]
name = "interop"
[application.trigger.messaging.channels]
inbox = {{ kind = "queue", link = "bus", address = "{base}.inbox" }}
results = {{ kind = "topic", link = "bus", address = "{base}.results" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox"]
publish = ["results"]
[component.probe]
source = "{{probe}}"
"#
        ));
        let provider = start(&[&app.manifest], Some(rc.path())).await;
        let brokers = "127.0.0.1:9092";
        let inbox = format!("{base}.inbox");
        for client in ["confluent", "kafka-python"] {
            for sent in ["binary", "structured"] {
                kafka_client(&["produce", brokers, &inbox, "5", client, sent]);
            }
        }
        let results = format!("{base}.results");
        for client in ["confluent", "kafka-python"] {
            let report = kafka_client(&["consume", brokers, &results, "20", client]);
            assert_eq!(report["events"], 20, "{mode}, read by {client}: {report}");
        }
        provider.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn two_processes_share_a_kafka_queue() {
    two_processes_share_a_queue(&format!("{LINK}partitions = 4\n"), true).await;
}

/// A nacked event waits in the retry topic for its delay while the events
/// behind it in the queue's topic are delivered at once; it comes back as
/// the next attempt, and a new member of the group after a restart does not
/// get what was settled.
#[tokio::test]
async fn a_retry_waits_aside_and_settled_events_are_not_delivered_again() {
    let link = crate::conformance::connect(LINK).await;
    let address = unique("kafka.retry");
    let group = format!("{address}.group");
    link.declare_queue(&address, &group).await.unwrap();
    let mode = SubscribeMode::Queue {
        group: group.clone(),
    };
    let mut q = link.subscribe(&address, mode.clone()).await.unwrap();
    for i in 0..5 {
        link.publish(&address, &Event::new(format!("e{i}"), "urn:t", "t"))
            .await
            .unwrap();
    }
    let (first, attempt, ack) = next(&mut q).await;
    assert_eq!((first.id.as_str(), attempt), ("e0", 1));
    let nacked = Instant::now();
    ack.nack(Duration::from_secs(3)).await.unwrap();
    for i in 1..5 {
        let (e, attempt, ack) = next(&mut q).await;
        assert_eq!((e.id, attempt), (format!("e{i}"), 1));
        ack.ack().await.unwrap();
    }
    assert!(
        nacked.elapsed() < Duration::from_secs(3),
        "the events behind the retry did not wait for it"
    );
    let (again, attempt, ack) = next(&mut q).await;
    assert_eq!((again.id.as_str(), attempt), ("e0", 2));
    assert!(nacked.elapsed() >= Duration::from_millis(2900));
    ack.ack().await.unwrap();
    q.stop().await;
    drop(q);
    // Offsets are committed once settled: the group's next member starts
    // after them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    link.publish(&address, &Event::new("after", "urn:t", "t"))
        .await
        .unwrap();
    let mut fresh = link.subscribe(&address, mode).await.unwrap();
    let (e, _, ack) = next(&mut fresh).await;
    assert_eq!(e.id, "after", "settled events are not delivered again");
    ack.ack().await.unwrap();
}

/// A producer that librdkafka declares failed for good (as after a
/// broker refused an idempotent producer's sequence) fails every record
/// from then on; the link puts a new producer in its place at the first
/// such failure, so the events retried after it go out, and are read.
#[tokio::test(flavor = "multi_thread")]
async fn a_producer_failed_for_good_gives_way_to_a_new_one() {
    use messaging_provider::broker::BrokerError;
    use messaging_provider::broker::kafka::publish::Publisher;
    use messaging_provider::broker::kafka::settings::KafkaSettings;
    let mut settings: KafkaSettings = toml::from_str("replication_factor = 1").unwrap();
    settings.check(Path::new(".")).unwrap();
    let publisher = Publisher::new("fatal", &settings).unwrap();
    let address = unique("kafka.fatal");
    publisher.ensure_topic(&address).await.unwrap();
    let reader = crate::conformance::connect(LINK).await;
    let mut topic = reader
        .subscribe(&address, SubscribeMode::Topic)
        .await
        .unwrap();
    publisher
        .publish(&address, &Event::new("before", "urn:t", "t"))
        .await
        .unwrap();

    publisher.fail_producer_for_test();
    let refused = publisher
        .publish(&address, &Event::new("refused", "urn:t", "t"))
        .await
        .expect_err("a producer failed for good takes no record");
    assert!(
        matches!(refused, BrokerError::Unavailable(_)),
        "a failed producer's refusal is retried as an outage: {refused:?}"
    );
    for id in ["retried", "after"] {
        publisher
            .publish(&address, &Event::new(id, "urn:t", "t"))
            .await
            .unwrap_or_else(|e| panic!("{id} after the new producer: {e}"));
    }
    let mut read = Vec::new();
    while read.len() < 3 {
        let (e, _, ack) = next(&mut topic).await;
        ack.ack().await.unwrap();
        read.push(e.id);
    }
    assert_eq!(read, ["before", "retried", "after"]);
}

async fn next(
    q: &mut Box<dyn messaging_provider::broker::Subscription>,
) -> (Event, u32, Box<dyn messaging_provider::broker::Acknowledge>) {
    tokio::time::timeout(Duration::from_secs(20), q.next())
        .await
        .expect("a delivery")
        .expect("open")
        .into_parts()
}

fn load_error(settings: &str) -> String {
    let rc = link_config("k", settings);
    RuntimeConfig::load(Some(rc.path()), &LinkRegistry::default())
        .err()
        .unwrap_or_else(|| panic!("{settings:?} loaded"))
        .to_string()
}

#[test]
fn settings_are_checked_at_load_with_their_key() {
    for (settings, key, says) in [
        ("brokers = []\n", "brokers", "at least one"),
        ("brokers = [\"localhost\"]\n", "brokers", "no port"),
        ("brokers = [\"h:0\"]\n", "brokers", "port 0"),
        ("client_id = \"a b\"\n", "client_id", "' '"),
        ("partitions = 0\n", "partitions", "between 1 and 10000"),
        ("replication_factor = 0\n", "replication_factor", "-1"),
        ("max_payload = 0\n", "max_payload", "between 1"),
        ("acks = \"leader\"\n", "acks", "idempotent"),
        ("acks = \"none\"\n", "acks", "unknown variant"),
        (
            "compression = \"brotli\"\n",
            "compression",
            "unknown variant",
        ),
        (
            "sasl_mechanism = \"PLAIN\"\nuser = \"u\"\n",
            "sasl_mechanism",
            "password",
        ),
        ("user = \"u\"\npassword = \"p\"\n", "user", "sasl_mechanism"),
        (
            "session_timeout = \"0s\"\n",
            "session_timeout",
            "between 1s",
        ),
        (
            "[messaging_link.k.topics.\"a b\"]\npartitions = 2\n",
            "topics",
            "not allowed",
        ),
        (
            "cert_file = \"missing.pem\"\nkey_file = \"missing.key\"\n",
            "cert_file",
            "missing.pem",
        ),
    ] {
        let error = load_error(&format!("type = \"kafka\"\n{settings}"));
        assert!(
            error.contains(key) && error.contains(says),
            "{settings:?}: {error}"
        );
    }
}

#[test]
fn channel_names_follow_kafkas_rules() {
    let rc = link_config("k", "type = \"kafka\"\n");
    let config = RuntimeConfig::load(Some(rc.path()), &LinkRegistry::default()).unwrap();
    for (channel, says) in [
        (
            r#"{ kind = "topic", link = "k", address = "a/b" }"#,
            "not a valid Kafka topic",
        ),
        (
            r#"{ kind = "topic", link = "k", address = "__internal" }"#,
            "reserves",
        ),
        (
            r#"{ kind = "queue", link = "k", address = "q", group = "a b" }"#,
            "retry topic",
        ),
        (
            r#"{ kind = "queue", link = "k", address = "ü" }"#,
            "not a valid Kafka topic",
        ),
    ] {
        let app = write_app(&format!(
            r#"spin_manifest_version = 2
[application]
name = "names"
[application.trigger.messaging.channels]
c = {channel}
[[trigger.messaging]]
component = "probe"
subscriptions = ["c"]
[component.probe]
source = "{{probe}}"
"#
        ));
        let errors = load_app_with_links(&app.manifest, &config)
            .err()
            .unwrap_or_else(|| panic!("{channel} loaded"))
            .to_string();
        assert!(
            errors.contains(says) && errors.contains("channels.c"),
            "{channel}: {errors}"
        );
    }
}
