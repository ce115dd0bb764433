//! The server over TLS, and mutual TLS: a client certificate signed by the configured CA and listed
//! by its fingerprint is a caller without an API key; other clients still use keys; plaintext is
//! refused; the health probe speaks TLS.

use billecta_onboarding::app::{Application, probe};
use billecta_onboarding::auth::SANDBOX_KEY;
use billecta_onboarding::config::Config;
use billecta_onboarding::proto;
use billecta_onboarding::proto::onboarding_service_client::OnboardingServiceClient;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A certificate and its key, in PEM, and the certificate's DER.
struct Issued {
    certificate: String,
    key: String,
    der: Vec<u8>,
}

fn issue(name: &str, subject_alt_names: Vec<String>, ca: &CertifiedIssuer<'_, KeyPair>) -> Issued {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(subject_alt_names).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let certificate = params.signed_by(&key, ca).unwrap();
    Issued {
        certificate: certificate.pem(),
        key: key.serialize_pem(),
        der: certificate.der().to_vec(),
    }
}

fn write(dir: &Path, file: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// A client over TLS, with a client certificate if given, sending `key` if given.
async fn client(
    port: u16,
    ca: &str,
    identity: Option<&Issued>,
    key: Option<&str>,
) -> OnboardingServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor,
    >,
> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(&identity.certificate, &identity.key));
    }
    let channel = Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let header = key.map(|key| {
        format!("Bearer {key}")
            .parse::<tonic::metadata::AsciiMetadataValue>()
            .unwrap()
    });
    OnboardingServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
        if let Some(header) = &header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    })
}

fn get(name: &str) -> proto::GetOnboardingRequest {
    proto::GetOnboardingRequest { name: name.into() }
}

#[tokio::test]
async fn tls_and_client_certificates_authenticate_callers() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = CertifiedIssuer::self_signed(
        {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "Payway test CA");
            params
        },
        KeyPair::generate().unwrap(),
    )
    .unwrap();
    let server = issue("localhost", vec!["localhost".into()], &ca);
    let known = issue("payway-reporting", Vec::new(), &ca);
    let unknown = issue("someone-else", Vec::new(), &ca);

    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_database(dir.path().join("onboarding.sqlite3").to_str().unwrap());
    config.sandbox = true;
    config.tls_cert = Some(write(dir.path(), "server.pem", &server.certificate));
    config.tls_key = Some(write(dir.path(), "server.key", &server.key));
    config.tls_client_ca = Some(write(dir.path(), "ca.pem", &ca.pem()));
    config.callers = serde_json::json!([
        {
            "name": "developer",
            "key_sha256": hex::encode(billecta_onboarding::auth::hash_key(SANDBOX_KEY)),
            "permissions": ["read", "write"],
        },
        {
            "name": "payway-reporting",
            "certificate_sha256": hex::encode(Sha256::digest(&known.der)),
            "permissions": ["read"],
        },
    ])
    .to_string();
    let application = Application::build(config).await.unwrap();
    let port = application.local_addr().port();
    let shutdown = application.shutdown_token();
    let running = tokio::spawn(application.run());
    let ca_pem = ca.pem();

    // An API key over TLS, without a client certificate.
    let mut developer = client(port, &ca_pem, None, Some(SANDBOX_KEY)).await;
    developer
        .create_onboarding(proto::CreateOnboardingRequest {
            tenant: "gp".into(),
            environment: proto::Environment::Test.into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // The listed certificate is the caller payway-reporting: it may read, not write.
    let mut reporting = client(port, &ca_pem, Some(&known), None).await;
    let read = reporting
        .get_onboarding(get("tenants/gp/environments/test"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.onboarding.unwrap().tenant, "gp");
    let write = reporting
        .record_agreement(proto::RecordAgreementRequest {
            name: "tenants/gp/environments/test".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(write.code(), Code::PermissionDenied);

    // A certificate the CA signed but nobody listed is nobody.
    let mut stranger = client(port, &ca_pem, Some(&unknown), None).await;
    let refused = stranger
        .get_onboarding(get("tenants/gp/environments/test"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // Plaintext gets nowhere.
    let plaintext = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    let answered = match plaintext {
        Err(_) => false,
        Ok(channel) => OnboardingServiceClient::new(channel)
            .get_onboarding(get("tenants/gp/environments/test"))
            .await
            .is_ok(),
    };
    assert!(!answered, "plaintext is not served");

    // The container's health probe speaks TLS with the CA.
    let ca_file = dir.path().join("ca.pem");
    probe(
        &format!("https://localhost:{port}"),
        Some(&ca_file),
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    shutdown.cancel();
    running.await.unwrap().unwrap();
}
