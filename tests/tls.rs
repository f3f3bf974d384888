//! TLS to PostgreSQL against a cluster that accepts only TLS (`hostssl` lines
//! only), with a server certificate for `localhost` from a CA made in the test.
//!
//! Each test starts its own cluster, because the certificates differ per test.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use walhook::config::{parse_connection_string, PostgresTarget};
use walhook::demo::cluster::{ClusterOptions, ServerTls, TempCluster, APP_DATABASE};
use walhook::demo::{config_for, free_loopback_addr, writes, SCHEMA_SQL};
use walhook::replication::ReplicationClient;

/// Limit of one connection attempt in these tests.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A CA and a server certificate it signed, as PEM.
struct TestPki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

/// Makes a CA and a server certificate whose only name is `localhost`.
fn make_pki() -> TestPki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("no names is valid");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "walhook test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("key generation works");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA self-signs");
    let issuer = Issuer::new(ca_params, ca_key);

    let mut server_params =
        CertificateParams::new(vec!["localhost".to_owned()]).expect("a valid DNS name");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server_key = KeyPair::generate().expect("key generation works");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("CA signs the server certificate");
    TestPki {
        ca_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    }
}

/// Starts a TLS-only cluster with the server certificate of `pki`.
async fn start_tls_cluster(pki: &TestPki) -> TempCluster {
    let options = ClusterOptions {
        ssl: Some(ServerTls {
            cert_pem: pki.server_cert_pem.clone(),
            key_pem: pki.server_key_pem.clone(),
            tls_only: true,
        }),
        ..ClusterOptions::default()
    };
    tokio::task::spawn_blocking(move || TempCluster::start_with(options))
        .await
        .expect("the start task does not panic")
        .expect("a TLS-only cluster starts")
}

/// Writes `pem` to a file in the cluster's directory and returns its path.
fn write_pem(cluster: &TempCluster, name: &str, pem: &str) -> PathBuf {
    let path = cluster.dir().join(name);
    std::fs::write(&path, pem).expect("the PEM file is written");
    path
}

fn target(url: &str) -> PostgresTarget {
    parse_connection_string(url)
        .expect("the URL parses")
        .load()
        .expect("the certificate files load")
}

/// Connects with tokio-postgres and returns whether the session uses TLS.
async fn query_connection_is_tls(target: &PostgresTarget) -> Result<bool, String> {
    let connect = walhook::db::connect(target, "application");
    let client = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|err| walhook::db::describe(&err))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|err| err.to_string())?;
    Ok(row.get(0))
}

/// Connects for replication and runs IDENTIFY_SYSTEM.
async fn identify_over_replication(target: &PostgresTarget) -> Result<(), String> {
    let connect = ReplicationClient::connect(target);
    let mut client = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|err| err.to_string())?;
    client
        .identify_system()
        .await
        .map_err(|err| err.to_string())?;
    Ok(())
}

async fn stop(cluster: TempCluster) {
    drop(tokio::task::spawn_blocking(move || drop(cluster)).await);
}

#[tokio::test]
async fn verify_ca_connects_by_address() {
    let pki = make_pki();
    let cluster = start_tls_cluster(&pki).await;
    let ca = write_pem(&cluster, "ca.pem", &pki.ca_pem);
    // channel_binding=require fails unless SCRAM binds to the certificate.
    let query = format!(
        "sslmode=verify-ca&sslrootcert={}&channel_binding=require",
        ca.display()
    );
    let url = cluster.walhook_url_at("127.0.0.1", APP_DATABASE, &query);

    let queries = query_connection_is_tls(&target(&url)).await;
    let replication = identify_over_replication(&target(&url)).await;

    assert_eq!(queries, Ok(true), "tokio-postgres connects over TLS");
    assert_eq!(replication, Ok(()), "the replication connection works");
    stop(cluster).await;
}

#[tokio::test]
async fn require_and_prefer_skip_host_check() {
    let pki = make_pki();
    let cluster = start_tls_cluster(&pki).await;

    for query in ["sslmode=require", "sslmode=prefer"] {
        let url = cluster.walhook_url_at("127.0.0.1", APP_DATABASE, query);

        let queries = query_connection_is_tls(&target(&url)).await;
        let replication = identify_over_replication(&target(&url)).await;

        assert_eq!(
            queries,
            Ok(true),
            "{query}: TLS without a certificate check"
        );
        assert_eq!(replication, Ok(()), "{query}: replication over TLS");
    }
    stop(cluster).await;
}

#[tokio::test]
async fn verify_full_checks_host_name() {
    let pki = make_pki();
    let cluster = start_tls_cluster(&pki).await;
    let ca = write_pem(&cluster, "ca.pem", &pki.ca_pem);
    let query = format!("sslmode=verify-full&sslrootcert={}", ca.display());
    let by_address = cluster.walhook_url_at("127.0.0.1", APP_DATABASE, &query);
    let by_name = cluster.walhook_url_at("localhost", APP_DATABASE, &query);

    let queries = query_connection_is_tls(&target(&by_address)).await;
    let replication = identify_over_replication(&target(&by_address)).await;
    let queries_by_name = query_connection_is_tls(&target(&by_name)).await;
    let replication_by_name = identify_over_replication(&target(&by_name)).await;

    let expected = "certificate for `localhost` does not match host `127.0.0.1`";
    let queries_error = queries.expect_err("127.0.0.1 is not in the certificate");
    assert!(
        queries_error.contains(expected),
        "tokio-postgres error names both: {queries_error}"
    );
    let replication_error = replication.expect_err("127.0.0.1 is not in the certificate");
    assert!(
        replication_error.contains(expected),
        "replication error names both: {replication_error}"
    );
    assert!(
        replication_error.contains("verify-ca"),
        "the error names the fix: {replication_error}"
    );
    assert_eq!(
        queries_by_name,
        Ok(true),
        "`localhost` is the certificate's name"
    );
    assert_eq!(
        replication_by_name,
        Ok(()),
        "replication by the certificate's name"
    );
    stop(cluster).await;
}

#[tokio::test]
async fn verify_ca_rejects_other_ca() {
    let pki = make_pki();
    let other = make_pki();
    let cluster = start_tls_cluster(&pki).await;
    let wrong_ca = write_pem(&cluster, "other-ca.pem", &other.ca_pem);
    let query = format!("sslmode=verify-ca&sslrootcert={}", wrong_ca.display());
    let url = cluster.walhook_url_at("127.0.0.1", APP_DATABASE, &query);

    let replication = identify_over_replication(&target(&url)).await;

    let error = replication.expect_err("the server certificate is from another CA");
    assert!(
        error.contains("not signed by a CA in sslrootcert"),
        "the error explains the chain failure: {error}"
    );
    assert!(
        error.contains(&wrong_ca.display().to_string()),
        "the error names the file: {error}"
    );
    stop(cluster).await;
}

/// Writes a config for `url` and loads the example schema into `app`.
fn prepare_check(cluster: &TempCluster, url: &str) -> PathBuf {
    cluster
        .execute(APP_DATABASE, SCHEMA_SQL)
        .expect("the example schema loads");
    cluster
        .execute(APP_DATABASE, &writes::admin_setup_sql(APP_DATABASE))
        .expect("grants and publication are created");
    let listen = free_loopback_addr().expect("127.0.0.1:0 can be bound");
    let path = cluster.dir().join("walhook.toml");
    std::fs::write(&path, config_for(url, "walhook", listen)).expect("the config is written");
    path
}

fn run_walhook(command: &str, config: &Path) -> std::process::Output {
    let config = config.display().to_string();
    support::walhook(&[command, "--config", &config])
}

#[tokio::test]
async fn walhook_check_passes_over_verify_ca() {
    let pki = make_pki();
    let cluster = start_tls_cluster(&pki).await;
    let ca = write_pem(&cluster, "ca.pem", &pki.ca_pem);
    let query = format!("sslmode=verify-ca&sslrootcert={}", ca.display());
    let url = cluster.walhook_url_at("127.0.0.1", APP_DATABASE, &query);
    let config = prepare_check(&cluster, &url);

    let (setup, check) = tokio::task::spawn_blocking(move || {
        (run_walhook("setup", &config), run_walhook("check", &config))
    })
    .await
    .expect("the walhook runs do not panic");

    let setup_stderr = String::from_utf8_lossy(&setup.stderr);
    let check_stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        setup.status.success(),
        "setup succeeds over TLS: {setup_stderr}"
    );
    assert!(
        check.status.success(),
        "every check passes over TLS:\n{check_stdout}"
    );
    assert!(
        !check_stdout.contains("FAIL"),
        "no failed line:\n{check_stdout}"
    );
    stop(cluster).await;
}

#[tokio::test]
async fn walhook_check_without_tls_fails() {
    let pki = make_pki();
    let cluster = start_tls_cluster(&pki).await;
    let url = cluster.walhook_url_at("127.0.0.1", APP_DATABASE, "sslmode=disable");
    let config = prepare_check(&cluster, &url);

    let check = tokio::task::spawn_blocking(move || run_walhook("check", &config))
        .await
        .expect("the walhook run does not panic");

    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "check exits non-zero:\n{stdout}");
    let line = stdout
        .lines()
        .find(|line| line.starts_with("FAIL  connection to the application database"))
        .unwrap_or_else(|| panic!("a failed connection line:\n{stdout}"));
    assert!(
        line.contains("no encryption"),
        "the server's reason is shown: {line}"
    );
    assert!(
        line.contains("sslmode"),
        "the line suggests a TLS sslmode: {line}"
    );
    stop(cluster).await;
}

#[tokio::test]
async fn prefer_falls_back_without_server_tls() {
    let cluster = tokio::task::spawn_blocking(TempCluster::start)
        .await
        .expect("the start task does not panic")
        .expect("a cluster without TLS starts");
    let url = cluster.walhook_url_at("127.0.0.1", APP_DATABASE, "sslmode=prefer");
    let require_url = cluster.walhook_url_at("127.0.0.1", APP_DATABASE, "sslmode=require");
    let binding_url = cluster.walhook_url_at(
        "127.0.0.1",
        APP_DATABASE,
        "sslmode=prefer&channel_binding=require",
    );

    let queries = query_connection_is_tls(&target(&url)).await;
    let replication = identify_over_replication(&target(&url)).await;
    let required = identify_over_replication(&target(&require_url)).await;
    let bound = identify_over_replication(&target(&binding_url)).await;

    assert_eq!(queries, Ok(false), "prefer connects without TLS");
    assert_eq!(replication, Ok(()), "prefer replicates without TLS");
    let error = required.expect_err("require needs a server with TLS");
    assert!(
        error.contains("does not offer TLS"),
        "the error says why: {error}"
    );
    let error = bound.expect_err("channel binding needs TLS");
    assert!(
        error.contains("without SCRAM-SHA-256-PLUS"),
        "the error says why: {error}"
    );
    stop(cluster).await;
}
