-- The whole onboarding model, for SQLite and PostgreSQL alike (SQLite accepts PostgreSQL's type names:
-- BIGINT is an integer there, BYTEA keeps blobs as blobs). Times are microseconds since the Unix epoch
-- (UTC). Rows of every table carry the tenant they belong to, so each query can be scoped to one tenant.

-- One per tenant and Billecta environment. state and blocked_on are the stored roll-up of the stages,
-- kept so that lists can filter on them.
CREATE TABLE onboardings (
    id           TEXT    PRIMARY KEY,
    tenant       TEXT    NOT NULL,
    environment  TEXT    NOT NULL CHECK (environment IN ('test', 'production')),
    state        TEXT    NOT NULL,
    blocked_on   TEXT    NOT NULL,
    version      BIGINT  NOT NULL,
    last_event   BIGINT  NOT NULL,
    agreement    TEXT,                -- JSON attestation, NULL until recorded
    account      TEXT,                -- JSON account details (no secrets), NULL until registered
    create_time  BIGINT  NOT NULL,
    update_time  BIGINT  NOT NULL,
    UNIQUE (tenant, environment)
);
CREATE INDEX onboardings_by_state ON onboardings (state, blocked_on, tenant, environment);

-- The creditors of an environment. Billecta must never hold two creditors for one organisation
-- number, so neither may we.
CREATE TABLE creditors (
    id                  TEXT    PRIMARY KEY,
    onboarding_id       TEXT    NOT NULL REFERENCES onboardings (id),
    tenant              TEXT    NOT NULL,
    creditor            TEXT    NOT NULL,  -- the resource id in the creditor's name
    organisation_number TEXT    NOT NULL,
    company_name        TEXT    NOT NULL,
    title               TEXT    NOT NULL DEFAULT '',
    creditor_public_id  TEXT,              -- Billecta's CreditorPublicId once created
    company_settings    TEXT,              -- JSON desired company settings
    invoice_settings    TEXT,              -- JSON desired invoice settings
    observed            TEXT,              -- JSON of what Billecta showed at the last check
    create_time         BIGINT  NOT NULL,
    update_time         BIGINT  NOT NULL,
    UNIQUE (onboarding_id, creditor),
    UNIQUE (onboarding_id, organisation_number)
);

-- Each stage's status: exactly what reads show. creditor_id is '' for environment-level stages.
-- attempts, next_attempt_time and the lease let one worker at a time resume interrupted work.
CREATE TABLE stages (
    onboarding_id     TEXT    NOT NULL REFERENCES onboardings (id),
    creditor_id       TEXT    NOT NULL DEFAULT '',
    stage             TEXT    NOT NULL,
    tenant            TEXT    NOT NULL,
    state             TEXT    NOT NULL,
    blocked_on        TEXT    NOT NULL,
    due               TEXT    NOT NULL,  -- JSON array of due item keys
    reason            TEXT    NOT NULL,
    message           TEXT    NOT NULL,
    update_time       BIGINT,
    attempts          BIGINT  NOT NULL DEFAULT 0,
    next_attempt_time BIGINT,
    lease_owner       TEXT,
    lease_expire_time BIGINT,
    PRIMARY KEY (onboarding_id, creditor_id, stage)
);
CREATE INDEX stages_to_resume ON stages (blocked_on, next_attempt_time);

-- Secrets, encrypted with AES-256-GCM. key_id names the key of the keyring that encrypted it; the
-- associated data binds tenant, environment and field, so a ciphertext moved elsewhere fails to
-- decrypt. fingerprint is what reads show instead of the secret.
CREATE TABLE credentials (
    onboarding_id TEXT    NOT NULL REFERENCES onboardings (id),
    creditor_id   TEXT    NOT NULL DEFAULT '',
    field         TEXT    NOT NULL,  -- account_password, api_secure_token, api_password, webhook_authorization
    tenant        TEXT    NOT NULL,
    key_id        TEXT    NOT NULL,
    nonce         BYTEA   NOT NULL,
    ciphertext    BYTEA   NOT NULL,
    fingerprint   TEXT    NOT NULL,
    principal     TEXT,              -- the Billecta username the secret belongs to, if any
    set_by        TEXT    NOT NULL,
    set_time      BIGINT  NOT NULL,
    verify_time   BIGINT,
    PRIMARY KEY (onboarding_id, creditor_id, field)
);

-- The audit trail: sequence numbers count from 1 per onboarding, without gaps, in commit order
-- (each event is written in the transaction that updates its onboarding row).
CREATE TABLE events (
    onboarding_id  TEXT    NOT NULL REFERENCES onboardings (id),
    sequence       BIGINT  NOT NULL,
    tenant         TEXT    NOT NULL,
    event_time     BIGINT  NOT NULL,
    actor          TEXT    NOT NULL,
    method         TEXT    NOT NULL,
    request_id     TEXT    NOT NULL,
    correlation_id TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,
    summary        TEXT    NOT NULL,
    transitions    TEXT    NOT NULL,  -- JSON array
    PRIMARY KEY (onboarding_id, sequence)
);

-- Results of mutating calls by the caller's request_id, so a retry returns the first result.
CREATE TABLE idempotency_keys (
    tenant       TEXT    NOT NULL,
    request_id   TEXT    NOT NULL,
    method       TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    response     TEXT    NOT NULL,  -- JSON of the stored result
    create_time  BIGINT  NOT NULL,
    PRIMARY KEY (tenant, request_id)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (create_time);
