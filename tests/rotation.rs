//! Rotating the encryption key end to end, on SQLite and PostgreSQL, the way operators roll it out:
//! a replica that knows the new key as active beside one that knows only the old, re-encryption while
//! both serve, then the old key retired. And a tampered ciphertext: refused loudly, nothing else
//! touched.

mod common;

use billecta_onboarding::crypto::Keyring;
use billecta_onboarding::domain::Environment;
use billecta_onboarding::rotation::{Reencrypted, reencrypt};
use billecta_onboarding::storage::{Store, StoreOptions};
use common::{Client, TestServer, proto};
use std::time::Duration;

const OLD: &str = "2026-05:q83vEjRWeJoRI0VniavN7xEjRWeJq83vEjRWeJq83vE=";
const NEW: &str = "2026-11:ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=";
const PASSWORD: &str = "Höst-2026-lösen";

async fn store(database: &str) -> Store {
    Store::connect(&StoreOptions {
        database: database.to_owned(),
        max_connections: Some(2),
        acquire_timeout: Duration::from_secs(5),
        cached_onboardings: 0,
    })
    .await
    .unwrap()
}

/// The result of the account check of a live validation, through `client`.
async fn account_check(client: &Client, name: &str) -> proto::ValidationCheck {
    client
        .clone()
        .validate_onboarding(proto::ValidateOnboardingRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .checks
        .into_iter()
        .find(|check| check.check == "account.signs_in")
        .expect("the account is checked")
}

/// The key ids of every stored secret.
async fn key_ids(database: &str) -> Vec<String> {
    let pool = common::database_pool(database).await;
    let ids = sqlx::query_scalar::<_, String>("SELECT key_id FROM credentials ORDER BY field")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    ids
}

/// A server whose only key is the old one, with a confirmed account: two secrets stored under it.
async fn confirmed_under_the_old_key(backend: &common::Backend) -> (TestServer, String) {
    let server = TestServer::start_with(backend, |config| {
        config.encryption_keys = OLD.into();
    })
    .await;
    let name = common::create(&server, "gp", proto::Environment::Test)
        .await
        .name;
    common::record_agreement_and_account(&server, &name).await;
    common::confirm_account(&server, &name, Environment::Test, PASSWORD).await;
    (server, name)
}

#[tokio::test]
async fn a_key_is_rotated_and_retired_while_the_service_serves() {
    for backend in common::backends() {
        let (server, name) = confirmed_under_the_old_key(&backend).await;
        assert_eq!(key_ids(&server.database).await, ["2026-05", "2026-05"]);

        // Step 1: replicas learn the new key, active; the secrets under the old one still read.
        let both = format!("{NEW},{OLD}");
        let rolling = server.replica_with(&both).await;
        assert_eq!(
            account_check(&rolling.client, &name).await.result,
            proto::CheckResult::Pass as i32
        );

        // Step 2: re-encrypt while both serve.
        let keyring = Keyring::parse(&both, None).unwrap();
        let store = store(&server.database).await;
        let done = reencrypt(&store, &keyring).await.unwrap();
        assert_eq!(
            done,
            Reencrypted {
                reencrypted: 2,
                skipped: 0,
                unreadable: 0,
                remaining: 0,
            }
        );
        assert_eq!(key_ids(&server.database).await, ["2026-11", "2026-11"]);
        assert_eq!(
            reencrypt(&store, &keyring).await.unwrap(),
            Reencrypted::default()
        );

        // Step 3: the old key is retired; everything still decrypts.
        let retired = server.replica_with(NEW).await;
        assert_eq!(
            account_check(&retired.client, &name).await.result,
            proto::CheckResult::Pass as i32
        );
        // A replica left behind with only the old key says so loudly instead of guessing.
        let stale = account_check(&server.client, &name).await;
        assert_eq!(stale.result, proto::CheckResult::Fail as i32);
        assert_eq!(stale.reason, "CREDENTIAL_UNREADABLE");
        store.close().await;
    }
}

#[tokio::test]
async fn a_tampered_ciphertext_fails_loudly_and_nothing_else_is_touched() {
    for backend in common::backends() {
        let (server, name) = confirmed_under_the_old_key(&backend).await;

        // Someone with database access flips the account token's ciphertext.
        let pool = common::database_pool(&server.database).await;
        let rows = |pool: sqlx::AnyPool| async move {
            sqlx::query_scalar::<_, Vec<u8>>("SELECT ciphertext FROM credentials ORDER BY field")
                .fetch_all(&pool)
                .await
                .unwrap()
        };
        let mut tampered = rows(pool.clone()).await[1].clone();
        tampered[0] ^= 0x01;
        sqlx::query("UPDATE credentials SET ciphertext = $1 WHERE field = 'secure_token'")
            .bind(tampered.clone())
            .execute(&pool)
            .await
            .unwrap();
        let before = rows(pool.clone()).await;

        // A replica that reads it (the one that wrote it keeps what it wrote in memory until the
        // onboarding's next write: changing the database behind the service's back is not a write).
        let reader = server.replica_with(OLD).await;
        let check = account_check(&reader.client, &name).await;
        assert_eq!(check.result, proto::CheckResult::Fail as i32);
        assert_eq!(check.reason, "CREDENTIAL_UNREADABLE");
        let keyring = Keyring::parse(&format!("{NEW},{OLD}"), None).unwrap();
        let store = store(&server.database).await;
        let done = reencrypt(&store, &keyring).await.unwrap();
        assert_eq!((done.reencrypted, done.unreadable), (1, 1));
        assert_eq!(done.remaining, 1, "the old key cannot be retired yet");
        let after = rows(pool.clone()).await;
        assert_eq!(
            after[1], before[1],
            "the unreadable secret is left exactly as it was"
        );
        assert_ne!(after[0], before[0], "the readable one moved to the new key");
        store.close().await;
        pool.close().await;
    }
}
