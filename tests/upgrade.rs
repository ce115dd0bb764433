//! A database written before credentials were kept per Billecta user, on SQLite and PostgreSQL: a
//! replica that starts on it moves each secret to the user it belongs to, and the tenant goes on as
//! it was: the same token handed to Payway, every check passing, nobody signed in.

mod common;

use billecta_onboarding::crypto::{Keyring, Sealed, SecretContext};
use billecta_onboarding::domain::Environment;
use common::{
    ACCOUNT_EMAIL, READY_PASSWORD, SHARED_ENCRYPTION_KEYS, TestServer, payment_configuration,
    payment_configuration_via, proto, ready_onboarding,
};
use sqlx::Row;

/// Where the service stored each secret before users: (scope, field) by what the user's secret is
/// for.
fn legacy_place(field: &str, creditor: &str, api: bool) -> (String, String) {
    match (api, field) {
        (false, "secure_token") => (String::new(), "account_secure_token".to_owned()),
        (false, _) => (String::new(), "account_password".to_owned()),
        (true, "secure_token") => (creditor.to_owned(), "api_secure_token".to_owned()),
        (true, _) => (creditor.to_owned(), "api_password".to_owned()),
    }
}

/// Rewrites the database as the service stored it before users: the account's and each creditor's
/// own copy of the user's secrets, no users, no references to them.
async fn store_the_old_way(server: &TestServer) {
    let keyring = Keyring::parse(SHARED_ENCRYPTION_KEYS, None).unwrap();
    let pool = common::database_pool(&server.database).await;
    let rows = sqlx::query(
        "SELECT c.onboarding_id, c.creditor_id, c.field, c.tenant, o.environment, c.key_id, c.nonce, \
         c.ciphertext, c.fingerprint, c.principal, c.set_by, c.set_time, c.verify_time \
         FROM credentials c JOIN onboardings o ON o.id = c.onboarding_id \
         WHERE c.creditor_id LIKE 'user-%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "the one user's token and password");
    let creditor: String = sqlx::query_scalar("SELECT id FROM creditors")
        .fetch_one(&pool)
        .await
        .unwrap();
    for row in rows {
        let get = |column: &str| row.try_get::<String, _>(column).unwrap();
        let (tenant, environment, scope, field) = (
            get("tenant"),
            get("environment"),
            get("creditor_id"),
            get("field"),
        );
        let sealed = Sealed {
            key_id: get("key_id"),
            nonce: row.try_get("nonce").unwrap(),
            ciphertext: row.try_get("ciphertext").unwrap(),
        };
        fn context<'a>(
            tenant: &'a str,
            environment: &'a str,
            scope: &'a str,
            field: &'a str,
        ) -> SecretContext<'a> {
            SecretContext {
                tenant,
                environment,
                scope,
                field,
            }
        }
        let secret = keyring
            .open(&sealed, &context(&tenant, &environment, &scope, &field))
            .unwrap();
        // Test's one user was both the account's and the API user: two copies of each.
        for api in [false, true] {
            let (old_scope, old_field) = legacy_place(&field, &creditor, api);
            let resealed = keyring
                .seal(
                    &secret,
                    &context(&tenant, &environment, &old_scope, &old_field),
                )
                .unwrap();
            sqlx::query(
                "INSERT INTO credentials (onboarding_id, creditor_id, field, tenant, key_id, nonce, ciphertext, fingerprint, principal, set_by, set_time, verify_time) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(get("onboarding_id"))
            .bind(&old_scope)
            .bind(&old_field)
            .bind(&tenant)
            .bind(&resealed.key_id)
            .bind(&resealed.nonce)
            .bind(&resealed.ciphertext)
            .bind(get("fingerprint"))
            .bind(row.try_get::<Option<String>, _>("principal").unwrap())
            .bind(get("set_by"))
            .bind(row.try_get::<i64, _>("set_time").unwrap())
            .bind(row.try_get::<Option<i64>, _>("verify_time").unwrap())
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    sqlx::query("DELETE FROM credentials WHERE creditor_id LIKE 'user-%'")
        .execute(&pool)
        .await
        .unwrap();
    // No users, and nothing refers to one.
    let account: String = sqlx::query_scalar("SELECT account FROM onboardings")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut account: serde_json::Value = serde_json::from_str(&account).unwrap();
    account.as_object_mut().unwrap().remove("user");
    let access: String = sqlx::query_scalar("SELECT api_access FROM creditors")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut access: serde_json::Value = serde_json::from_str(&access).unwrap();
    access.as_object_mut().unwrap().remove("user");
    sqlx::query("UPDATE onboardings SET users = NULL, account = $1, revision = revision + 1")
        .bind(account.to_string())
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE creditors SET api_access = $1")
        .bind(access.to_string())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test]
async fn a_replica_starting_on_secrets_stored_per_stage_moves_them_to_their_user() {
    for backend in common::backends() {
        let server = TestServer::start_with(&backend, |config| {
            config.encryption_keys = SHARED_ENCRYPTION_KEYS.to_owned();
        })
        .await;
        let name = ready_onboarding(&server).await;
        let creditor = common::get(&server, &name).await.unwrap().creditors[0].clone();
        let before = payment_configuration(&server, &creditor.name)
            .await
            .unwrap();
        store_the_old_way(&server).await;

        let replica = server.replica().await;
        let after =
            payment_configuration_via(common::payments_on(replica.channel.clone()), &creditor.name)
                .await
                .unwrap();
        assert_eq!(after.secure_token, before.secure_token);
        assert_eq!(after.password, READY_PASSWORD);
        assert_eq!(after.username, ACCOUNT_EMAIL);
        let report = replica
            .client
            .clone()
            .validate_onboarding(proto::ValidateOnboardingRequest { name: name.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(
            report
                .checks
                .iter()
                .all(|check| check.result == proto::CheckResult::Pass as i32),
            "{:?}",
            report.checks
        );
        assert_eq!(
            report.onboarding.unwrap().state,
            proto::OnboardingState::Ready as i32
        );
        assert_eq!(
            server.simulator(Environment::Test).sign_ins(ACCOUNT_EMAIL),
            1,
            "nobody signed in"
        );

        // Nothing is left the old way, and the trail says what happened.
        let pool = common::database_pool(&server.database).await;
        let fields: Vec<String> =
            sqlx::query_scalar("SELECT field FROM credentials ORDER BY field")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(fields, ["password", "secure_token"]);
        pool.close().await;
        let trail = common::events(&server, &name).await;
        let upgrade = trail
            .iter()
            .find(|event| event.method == "UpgradeCredentials")
            .expect("the upgrade is in the trail");
        assert_eq!(upgrade.actor, "upgrade");
        assert!(upgrade.summary.contains("1 user"), "{}", upgrade.summary);
    }
}
