//! The onboarding domain: environments, stages and their states, the onboarding record and the rules
//! that move it. Nothing here knows about gRPC or SQL; the transport and storage translate to and from
//! these types.
//!
//! - [`validate`] parses caller input into values that are valid by construction.
//! - [`stages`] decides every stage's state, what is due and from whom, and the roll-up.
//! - [`onboarding`] is the record one tenant and environment has, with the operations on it.
//! - [`failure`] holds the domain's own errors: what it refuses and what it is told failed.

pub mod failure;
pub mod onboarding;
pub mod stages;
pub mod swedish;
pub mod validate;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, UTC. Stored as a 64-bit integer in both databases.
pub type Micros = i64;

/// The current time in microseconds since the Unix epoch.
pub fn now_micros() -> Micros {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
}

/// Defines a string-backed domain enum with its stored spelling, so that the database, the audit
/// trail and the logs all use the same words.
macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The spelling used in storage, logs and the audit trail.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the stored spelling.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

stored_enum! {
    /// A Billecta environment. The two are fully separate: credentials of one never work in the other.
    Environment {
        Test => "test",
        Production => "production",
    }
}

stored_enum! {
    /// The setup checklist, in order. The first two belong to the environment, the rest to a creditor.
    Stage {
        Agreement => "AGREEMENT",
        Account => "ACCOUNT",
        Creditor => "CREDITOR",
        CompanySettings => "COMPANY_SETTINGS",
        InvoiceSettings => "INVOICE_SETTINGS",
        ApiAccess => "API_ACCESS",
        PaymentConfiguration => "PAYMENT_CONFIGURATION",
        Webhooks => "WEBHOOKS",
    }
}

stored_enum! {
    /// Where a stage is.
    StageState {
        NotStarted => "NOT_STARTED",
        InProgress => "IN_PROGRESS",
        ActionRequired => "ACTION_REQUIRED",
        Completed => "COMPLETED",
        Skipped => "SKIPPED",
        Failed => "FAILED",
        Broken => "BROKEN",
    }
}

stored_enum! {
    /// Whose move it is.
    BlockedOn {
        Nobody => "NONE",
        Tenant => "TENANT",
        PaywayOperations => "PAYWAY_OPERATIONS",
        BillectaSupport => "BILLECTA_SUPPORT",
        SystemRetrying => "SYSTEM_RETRYING",
    }
}

stored_enum! {
    /// The roll-up of every stage of an onboarding.
    OnboardingState {
        InProgress => "IN_PROGRESS",
        ActionRequired => "ACTION_REQUIRED",
        Ready => "READY",
        Failed => "FAILED",
        Broken => "BROKEN",
    }
}

stored_enum! {
    /// A kind of secret the service keeps, encrypted: a Billecta user's (scoped by the user's id) or
    /// a creditor's.
    CredentialField {
        /// A Billecta user's SecureToken: the account's, and the one Payway's payment
        /// configuration holds for every creditor whose API user it is.
        Token => "secure_token",
        /// A Billecta user's password, when it was given: to sign in again, only when the stored
        /// token is refused.
        Password => "password",
        /// The password CreateApiUser generated for the API user it makes, kept with the creditor's
        /// stage until the user's token is registered, so an interrupted attempt is carried on.
        GeneratedPassword => "generated_password",
        /// The `Authorization` value Billecta's webhooks send to Payway (a creditor's).
        WebhookAuthorization => "webhook_authorization",
        /// Stored before credentials were kept per user; only the start-up upgrade reads these.
        LegacyAccountPassword => "account_password",
        LegacyAccountToken => "account_secure_token",
        LegacyApiPassword => "api_password",
        LegacyApiToken => "api_secure_token",
    }
}

impl Stage {
    /// Stages that may be skipped on purpose; READY does not wait for them.
    pub fn is_optional(self) -> bool {
        matches!(self, Stage::InvoiceSettings | Stage::Webhooks)
    }
}

impl StageState {
    /// Completed or skipped: nothing more is expected of the stage.
    pub fn is_done(self) -> bool {
        matches!(self, StageState::Completed | StageState::Skipped)
    }
}
