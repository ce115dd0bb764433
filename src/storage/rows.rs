//! The SQL of the store, written once for both engines (`$n` placeholders work in SQLite and
//! PostgreSQL), and the mapping between rows and domain records.

use super::{Result, StorageError, StoredResult, db_error};
use crate::crypto::Sealed;
use crate::domain::onboarding::{
    CredentialRecord, CreditorRecord, EventRecord, Lease, OnboardingRecord, StageRecord,
};
use crate::domain::validate::OnboardingKey;
use crate::domain::{BlockedOn, CredentialField, Environment, OnboardingState, Stage, StageState};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::any::AnyRow;

macro_rules! onboarding_select {
    ($($tail:literal)*) => {
        concat!(
            "SELECT id, tenant, environment, state, blocked_on, version, last_event, revision, agreement, account, users, create_time, update_time FROM onboardings ",
            $($tail),*
        )
    };
}

pub const SELECT_ONBOARDING: &str = onboarding_select!("WHERE tenant = $1 AND environment = $2");
/// The revision of an onboarding: whether what the cache keeps of it is current.
pub const SELECT_REVISION: &str =
    "SELECT id, revision FROM onboardings WHERE tenant = $1 AND environment = $2";
/// The onboarding a write locks, with the columns of [`SELECT_RESULT`] beside it for the tenant's
/// request_id $3 (NULL when none is stored, or $3 is NULL): one round trip for both.
macro_rules! locked_select {
    ($($tail:literal)*) => {
        concat!(
            "SELECT o.id, o.tenant, o.environment, o.state, o.blocked_on, o.version, o.last_event, o.revision, o.agreement, o.account, o.users, o.create_time, o.update_time, \
             r.method, r.request_hash, r.response FROM onboardings o \
             LEFT JOIN idempotency_keys r ON r.tenant = o.tenant AND r.request_id = $3 \
             WHERE o.tenant = $1 AND o.environment = $2",
            $($tail),*
        )
    };
}
/// SQLite: the transaction already holds the database's write lock.
pub const SELECT_LOCKED: &str = locked_select!();
/// PostgreSQL: locks the onboarding's row (not the result's).
pub const SELECT_LOCKED_FOR_UPDATE: &str = locked_select!(" FOR UPDATE OF o");
pub const LIST_ONBOARDINGS: &str = onboarding_select!(
    "WHERE (tenant > $1 OR (tenant = $1 AND environment > $2)) "
    "AND ($3 = '' OR environment = $3) AND ($4 = '' OR state = $4) AND ($5 = '' OR blocked_on = $5) "
    "AND ($7 = '' OR $7 LIKE '%,' || tenant || ',%') "
    "ORDER BY tenant, environment LIMIT $6"
);
pub const INSERT_ONBOARDING: &str = "INSERT INTO onboardings (id, tenant, environment, state, blocked_on, version, last_event, agreement, account, create_time, update_time, revision, users) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
pub const UPDATE_ONBOARDING: &str = "UPDATE onboardings SET state = $1, blocked_on = $2, version = $3, last_event = $4, agreement = $5, account = $6, update_time = $7, revision = $8, users = $9 \
     WHERE id = $10 AND tenant = $11 AND revision = $12";

pub const SELECT_STAGES: &str = "SELECT creditor_id, stage, state, blocked_on, due, reason, message, update_time, lease_owner, lease_expire_time, attempts, next_attempt_time FROM stages \
     WHERE onboarding_id = $1 AND tenant = $2";
pub const UPSERT_STAGE: &str = "INSERT INTO stages (onboarding_id, creditor_id, stage, tenant, state, blocked_on, due, reason, message, update_time, lease_owner, lease_expire_time, attempts, next_attempt_time) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
     ON CONFLICT (onboarding_id, creditor_id, stage) DO UPDATE SET state = excluded.state, blocked_on = excluded.blocked_on, \
     due = excluded.due, reason = excluded.reason, message = excluded.message, update_time = excluded.update_time, \
     lease_owner = excluded.lease_owner, lease_expire_time = excluded.lease_expire_time, \
     attempts = excluded.attempts, next_attempt_time = excluded.next_attempt_time";

pub const SELECT_CREDITORS: &str = "SELECT id, creditor, organisation_number, company_name, title, creditor_public_id, company_settings, invoice_settings, api_access, webhooks FROM creditors \
     WHERE onboarding_id = $1 AND tenant = $2 ORDER BY creditor";
pub const INSERT_CREDITOR: &str = "INSERT INTO creditors (id, onboarding_id, tenant, creditor, organisation_number, company_name, title, creditor_public_id, company_settings, invoice_settings, api_access, webhooks, create_time, update_time) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";
pub const UPDATE_CREDITOR: &str = "UPDATE creditors SET company_name = $1, title = $2, creditor_public_id = $3, company_settings = $4, invoice_settings = $5, api_access = $6, webhooks = $7, update_time = $8 \
     WHERE id = $9 AND tenant = $10";

pub const SELECT_CREDENTIALS: &str = "SELECT creditor_id, field, fingerprint, principal, set_by, set_time, verify_time, key_id, nonce, ciphertext FROM credentials \
     WHERE onboarding_id = $1 AND tenant = $2 ORDER BY creditor_id, field";
pub const SELECT_SEALED: &str = "SELECT key_id, nonce, ciphertext FROM credentials \
     WHERE onboarding_id = $1 AND tenant = $2 AND creditor_id = $3 AND field = $4";
pub const SELECT_STAGES_TO_RESUME: &str = "SELECT o.tenant, o.environment, s.stage, COALESCE(c.creditor, '') AS creditor FROM stages s \
     JOIN onboardings o ON o.id = s.onboarding_id AND o.tenant = s.tenant \
     LEFT JOIN creditors c ON c.id = s.creditor_id AND c.tenant = s.tenant \
     WHERE s.state = 'IN_PROGRESS' AND (s.blocked_on = 'SYSTEM_RETRYING' OR s.lease_expire_time IS NOT NULL) \
     AND (s.lease_expire_time IS NULL OR s.lease_expire_time <= $1) AND COALESCE(s.update_time, 0) <= $2 \
     AND (s.next_attempt_time IS NULL OR s.next_attempt_time <= $1) \
     ORDER BY s.update_time LIMIT $3";
pub const COUNT_ONBOARDINGS: &str =
    "SELECT environment, state, COUNT(*) AS n FROM onboardings GROUP BY environment, state";
pub const COUNT_STAGES: &str = "SELECT o.environment, s.stage, s.state, COUNT(*) AS n FROM stages s \
     JOIN onboardings o ON o.id = s.onboarding_id AND o.tenant = s.tenant GROUP BY o.environment, s.stage, s.state";
pub const SCHEDULE_VALIDATIONS: &str = "UPDATE onboardings SET next_validation_time = $1 \
     WHERE next_validation_time IS NULL AND state IN ('READY', 'BROKEN')";
pub const SELECT_VALIDATIONS_DUE: &str = "SELECT tenant, environment, next_validation_time FROM onboardings \
     WHERE next_validation_time <= $1 AND state IN ('READY', 'BROKEN') ORDER BY next_validation_time LIMIT $2";
pub const TAKE_VALIDATION: &str = "UPDATE onboardings SET next_validation_time = $1 \
     WHERE tenant = $2 AND environment = $3 AND next_validation_time = $4";
pub const SELECT_CREDENTIALS_TO_REENCRYPT: &str = "SELECT c.onboarding_id, c.creditor_id, c.field, c.tenant, o.environment, c.key_id, c.nonce, c.ciphertext \
     FROM credentials c JOIN onboardings o ON o.id = c.onboarding_id AND o.tenant = c.tenant \
     WHERE c.key_id <> $1 ORDER BY c.tenant, c.onboarding_id, c.creditor_id, c.field";
/// The onboardings that still hold secrets stored before credentials were kept per Billecta user.
pub const SELECT_LEGACY_CREDENTIALS: &str = "SELECT DISTINCT o.tenant, o.environment FROM credentials c \
     JOIN onboardings o ON o.id = c.onboarding_id AND o.tenant = c.tenant \
     WHERE c.field IN ('account_password', 'account_secure_token', 'api_password', 'api_secure_token') \
     ORDER BY o.tenant, o.environment";
pub const REPLACE_SEALED: &str = "UPDATE credentials SET key_id = $1, nonce = $2, ciphertext = $3 \
     WHERE onboarding_id = $4 AND creditor_id = $5 AND field = $6 AND tenant = $7 AND key_id = $8 AND nonce = $9";
pub const UPSERT_CREDENTIAL: &str = "INSERT INTO credentials (onboarding_id, creditor_id, field, tenant, key_id, nonce, ciphertext, fingerprint, principal, set_by, set_time, verify_time) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (onboarding_id, creditor_id, field) DO UPDATE SET key_id = excluded.key_id, nonce = excluded.nonce, \
     ciphertext = excluded.ciphertext, fingerprint = excluded.fingerprint, principal = excluded.principal, \
     set_by = excluded.set_by, set_time = excluded.set_time, verify_time = excluded.verify_time";

/// The health check's own write (see `migrations/0005_write_probe.sql`).
pub const PROBE_WRITE: &str = "INSERT INTO write_probe (id, probe_time) VALUES (1, $1) \
     ON CONFLICT (id) DO UPDATE SET probe_time = excluded.probe_time";
/// PostgreSQL: takes the lock of onboarding $1 of tenant $2, as every write of it does first.
pub const LOCK_ONBOARDING_BY_ID: &str =
    "SELECT id FROM onboardings WHERE id = $1 AND tenant = $2 FOR UPDATE";
/// Marks onboarding $1 of tenant $2 as changed (see `cache`).
pub const MOVE_REVISION: &str =
    "UPDATE onboardings SET revision = revision + 1 WHERE id = $1 AND tenant = $2";

pub const VERIFY_CREDENTIAL: &str = "UPDATE credentials SET verify_time = $1 WHERE onboarding_id = $2 AND creditor_id = $3 AND field = $4 AND tenant = $5";
pub const DELETE_CREDENTIAL: &str = "DELETE FROM credentials WHERE onboarding_id = $1 AND creditor_id = $2 AND field = $3 AND tenant = $4";

pub const INSERT_EVENT: &str = "INSERT INTO events (onboarding_id, sequence, tenant, event_time, actor, method, request_id, correlation_id, outcome, summary, transitions) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
pub const LIST_EVENTS: &str = "SELECT sequence, event_time, actor, method, request_id, correlation_id, outcome, summary, transitions FROM events \
     WHERE onboarding_id = $1 AND tenant = $2 AND sequence > $3 ORDER BY sequence LIMIT $4";

/// Deletes up to $2 stored results created before $1 (oldest first).
pub const DELETE_EXPIRED_RESULTS: &str = "DELETE FROM idempotency_keys WHERE (tenant, request_id) IN \
     (SELECT tenant, request_id FROM idempotency_keys WHERE create_time < $1 ORDER BY create_time LIMIT $2)";
pub const SELECT_RESULT: &str = "SELECT method, request_hash, response FROM idempotency_keys WHERE tenant = $1 AND request_id = $2";
/// The stored result in a row of [`SELECT_RESULT`] (or beside an onboarding, where it may be NULL).
pub fn stored_result(row: &AnyRow) -> Result<Option<StoredResult>> {
    let Some(method) = row
        .try_get::<Option<String>, _>("method")
        .map_err(db_error)?
    else {
        return Ok(None);
    };
    Ok(Some(StoredResult {
        method,
        request_hash: row.try_get("request_hash").map_err(db_error)?,
        response: row.try_get("response").map_err(db_error)?,
    }))
}
pub const INSERT_RESULT: &str = "INSERT INTO idempotency_keys (tenant, request_id, method, request_hash, response, create_time) \
     VALUES ($1, $2, $3, $4, $5, $6)";

/// Serialises a JSON column.
pub fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StorageError::Internal(e.into()))
}

/// Serialises a nullable JSON column.
pub fn json_opt<T: Serialize>(value: &Option<T>) -> Result<Option<String>> {
    value.as_ref().map(json).transpose()
}

/// Serialises a list into a JSON column that is NULL while the list is empty.
pub fn json_list<T: Serialize>(values: &[T]) -> Result<Option<String>> {
    if values.is_empty() {
        return Ok(None);
    }
    json(&values).map(Some)
}

fn parse_json<T: DeserializeOwned>(column: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| {
        StorageError::Internal(
            anyhow::Error::new(e).context(format!("stored {column} is not valid")),
        )
    })
}

fn get<T>(row: &AnyRow, column: &str) -> Result<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(column).map_err(db_error)
}

/// A column holding one of a domain enum's stored spellings.
fn stored<T>(row: &AnyRow, column: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    let text: String = get(row, column)?;
    parse(&text)
        .ok_or_else(|| StorageError::internal(format!("stored {column} {text:?} is not known")))
}

pub fn onboarding(row: &AnyRow) -> Result<OnboardingRecord> {
    let agreement: Option<String> = get(row, "agreement")?;
    let account: Option<String> = get(row, "account")?;
    let users: Option<String> = get(row, "users")?;
    Ok(OnboardingRecord {
        id: get(row, "id")?,
        tenant: get(row, "tenant")?,
        environment: stored(row, "environment", Environment::parse)?,
        state: stored(row, "state", OnboardingState::parse)?,
        blocked_on: stored(row, "blocked_on", BlockedOn::parse)?,
        version: get(row, "version")?,
        last_event: get(row, "last_event")?,
        revision: get(row, "revision")?,
        agreement: agreement
            .map(|text| parse_json("agreement", &text))
            .transpose()?,
        account: account
            .map(|text| parse_json("account", &text))
            .transpose()?,
        stages: Vec::new(),
        creditors: Vec::new(),
        users: users
            .map(|text| parse_json("users", &text))
            .transpose()?
            .unwrap_or_default(),
        credentials: Vec::new(),
        create_time: get(row, "create_time")?,
        update_time: get(row, "update_time")?,
    })
}

/// A stage row, with the id of the creditor it belongs to ('' for the environment).
pub fn stage(row: &AnyRow) -> Result<(String, StageRecord)> {
    let due: String = get(row, "due")?;
    let record = StageRecord {
        stage: stored(row, "stage", Stage::parse)?,
        state: stored(row, "state", StageState::parse)?,
        blocked_on: stored(row, "blocked_on", BlockedOn::parse)?,
        due: parse_json("due", &due)?,
        reason: get(row, "reason")?,
        message: get(row, "message")?,
        update_time: get(row, "update_time")?,
        lease: match get::<Option<String>>(row, "lease_owner")? {
            Some(owner) => Some(Lease {
                owner,
                expire_time: get::<Option<i64>>(row, "lease_expire_time")?.unwrap_or_default(),
            }),
            None => None,
        },
        attempts: get(row, "attempts")?,
        next_attempt_time: get(row, "next_attempt_time")?,
    };
    Ok((get(row, "creditor_id")?, record))
}

pub fn creditor(key: &OnboardingKey, row: &AnyRow) -> Result<CreditorRecord> {
    let creditor: String = get(row, "creditor")?;
    Ok(CreditorRecord {
        id: get(row, "id")?,
        name: format!("{}/creditors/{creditor}", key.name()),
        organisation_number: get(row, "organisation_number")?,
        company_name: get(row, "company_name")?,
        title: get(row, "title")?,
        creditor_public_id: get(row, "creditor_public_id")?,
        stages: Vec::new(),
        company_settings: get::<Option<String>>(row, "company_settings")?
            .map(|text| parse_json("company_settings", &text))
            .transpose()?,
        invoice_settings: get::<Option<String>>(row, "invoice_settings")?
            .map(|text| parse_json("invoice_settings", &text))
            .transpose()?,
        api_access: get::<Option<String>>(row, "api_access")?
            .map(|text| parse_json("api_access", &text))
            .transpose()?,
        webhooks: get::<Option<String>>(row, "webhooks")?
            .map(|text| parse_json("webhooks", &text))
            .transpose()?,
    })
}

pub fn credential(row: &AnyRow) -> Result<CredentialRecord> {
    Ok(CredentialRecord {
        scope: get(row, "creditor_id")?,
        field: stored(row, "field", CredentialField::parse)?,
        fingerprint: get(row, "fingerprint")?,
        principal: get(row, "principal")?,
        set_by: get(row, "set_by")?,
        set_time: get(row, "set_time")?,
        verify_time: get(row, "verify_time")?,
    })
}

pub fn sealed(row: &AnyRow) -> Result<Sealed> {
    Ok(Sealed {
        key_id: get(row, "key_id")?,
        nonce: get(row, "nonce")?,
        ciphertext: get(row, "ciphertext")?,
    })
}

pub fn event(row: &AnyRow) -> Result<EventRecord> {
    let transitions: String = get(row, "transitions")?;
    Ok(EventRecord {
        sequence: get(row, "sequence")?,
        event_time: get(row, "event_time")?,
        actor: get(row, "actor")?,
        method: get(row, "method")?,
        request_id: get(row, "request_id")?,
        correlation_id: get(row, "correlation_id")?,
        outcome: get(row, "outcome")?,
        summary: get(row, "summary")?,
        transitions: parse_json("transitions", &transitions)?,
    })
}
