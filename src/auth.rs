//! Who may call what. Callers present a bearer API key, or (with mutual TLS) a client certificate;
//! the configuration holds only each key's SHA-256 hash or the certificate's SHA-256 fingerprint, with
//! the caller's name, its permissions and, optionally, the tenants it may touch.
//!
//! Keys are random (`billecta-onboarding new-api-key` makes one), so an unsalted hash is safe to keep
//! in configuration: it cannot be reversed, and guessing a 256-bit key is hopeless. Every configured
//! hash is compared with the presented key's hash in constant time, so timing tells nothing about how
//! close a guess came.

use crate::domain::validate::TenantId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read onboardings, their events and watch them.
    Read,
    /// Change onboardings: every mutating RPC.
    Write,
    /// Read a payment configuration, the only way to a plaintext credential.
    PaymentConfiguration,
}

impl Permission {
    pub const ALL: [Permission; 3] = [
        Permission::Read,
        Permission::Write,
        Permission::PaymentConfiguration,
    ];

    /// The permission named `text` (as in `--callers`).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|permission| permission.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::PaymentConfiguration => "payment_configuration",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured caller, as operators write it (JSON):
/// `{"name": "payway-payments", "key_sha256": "<64 hex>", "permissions": ["payment_configuration"],
/// "tenants": ["gp"]}`. Without `tenants` the caller may touch every tenant. A caller that presents a
/// client certificate instead has `certificate_sha256` (the SHA-256 of the certificate's DER).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_sha256: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate_sha256: String,
    pub permissions: BTreeSet<Permission>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<BTreeSet<String>>,
}

/// A valid caller without the permission, or outside its tenants. Says nothing of whether the
/// resource exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("caller {caller:?} may not do this: it needs the {permission} permission for this tenant")]
pub struct PermissionDenied {
    pub caller: String,
    pub permission: Permission,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub permissions: BTreeSet<Permission>,
    /// `None`: every tenant.
    pub tenants: Option<BTreeSet<String>>,
}

impl Caller {
    /// Refuses a caller without `permission`, or outside its tenants when the call concerns `tenant`.
    /// The refusal names neither whether the resource exists nor which tenants the caller has.
    pub fn authorize(
        &self,
        permission: Permission,
        tenant: Option<&TenantId>,
    ) -> Result<(), PermissionDenied> {
        if !self.permissions.contains(&permission)
            || tenant.is_some_and(|tenant| !self.may_see(tenant.as_str()))
        {
            return Err(PermissionDenied {
                caller: self.name.clone(),
                permission,
            });
        }
        Ok(())
    }

    /// Whether the caller may see this tenant at all (for filtering lists).
    pub fn may_see(&self, tenant: &str) -> bool {
        self.tenants
            .as_ref()
            .is_none_or(|allowed| allowed.contains(tenant))
    }
}

/// How a configured caller proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    /// The SHA-256 of its bearer key.
    Key([u8; 32]),
    /// The SHA-256 of its client certificate (DER).
    Certificate([u8; 32]),
}

/// The configured callers.
#[derive(Debug, Clone)]
pub struct Callers {
    /// Shared with every call they make, so a call does not copy its caller.
    entries: Vec<(Arc<Caller>, Proof)>,
}

/// The key `--sandbox` accepts when no callers are configured: every permission, every tenant.
pub const SANDBOX_KEY: &str = "sandbox-development-key";

impl Callers {
    /// Parses a JSON array of [`CallerEntry`]. Errors say which entry and why, never a key.
    pub fn parse(json: &str) -> anyhow::Result<Self> {
        let entries: Vec<CallerEntry> = serde_json::from_str(json).map_err(|error| {
            anyhow::anyhow!("the callers are not a JSON array of callers: {error}")
        })?;
        anyhow::ensure!(!entries.is_empty(), "no callers are configured");
        let mut names = BTreeSet::new();
        let mut callers = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let name = entry.name.trim().to_owned();
            anyhow::ensure!(!name.is_empty(), "caller {index} has no name");
            anyhow::ensure!(
                names.insert(name.clone()),
                "caller {name:?} is configured twice"
            );
            let digest = |field: &str, text: &str| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut hash).map_err(|_| {
                    anyhow::anyhow!("caller {name:?}: {field} must be 64 hexadecimal digits")
                })?;
                anyhow::Ok(hash)
            };
            let proof = match (
                entry.key_sha256.is_empty(),
                entry.certificate_sha256.is_empty(),
            ) {
                (false, true) => Proof::Key(digest("key_sha256", &entry.key_sha256)?),
                (true, false) => Proof::Certificate(digest(
                    "certificate_sha256",
                    &entry.certificate_sha256.replace(':', ""),
                )?),
                _ => anyhow::bail!(
                    "caller {name:?} needs exactly one of key_sha256 and certificate_sha256"
                ),
            };
            anyhow::ensure!(
                !entry.permissions.is_empty(),
                "caller {name:?} has no permissions"
            );
            let tenants = match entry.tenants {
                Some(tenants) => {
                    for tenant in &tenants {
                        TenantId::parse("tenants", tenant).map_err(|violation| {
                            anyhow::anyhow!(
                                "caller {name:?}: tenant {tenant:?} {}",
                                violation.description
                            )
                        })?;
                    }
                    Some(tenants)
                }
                None => None,
            };
            anyhow::ensure!(
                !callers.iter().any(|(_, existing)| *existing == proof),
                "caller {name:?} has the same key or certificate as another caller"
            );
            callers.push((
                Arc::new(Caller {
                    name,
                    permissions: entry.permissions,
                    tenants,
                }),
                proof,
            ));
        }
        Ok(Callers { entries: callers })
    }

    /// The sandbox's one caller, with [`SANDBOX_KEY`].
    pub fn sandbox() -> Self {
        Callers {
            entries: vec![(
                Arc::new(Caller {
                    name: "sandbox-developer".to_owned(),
                    permissions: Permission::ALL.into(),
                    tenants: None,
                }),
                Proof::Key(hash_key(SANDBOX_KEY)),
            )],
        }
    }

    /// Whether some caller signs in with a client certificate.
    pub fn has_certificate_callers(&self) -> bool {
        self.entries
            .iter()
            .any(|(_, proof)| matches!(proof, Proof::Certificate(_)))
    }

    /// The caller a bearer key belongs to. Every configured hash is compared, in constant time.
    pub fn authenticate(&self, key: &str) -> Option<&Arc<Caller>> {
        self.find(Proof::Key(hash_key(key)))
    }

    /// The caller a verified client certificate (DER) belongs to.
    pub fn authenticate_certificate(&self, der: &[u8]) -> Option<&Arc<Caller>> {
        self.find(Proof::Certificate(Sha256::digest(der).into()))
    }

    fn find(&self, presented: Proof) -> Option<&Arc<Caller>> {
        let mut found = None;
        for (caller, proof) in &self.entries {
            let same = match (presented, proof) {
                (Proof::Key(a), Proof::Key(b)) | (Proof::Certificate(a), Proof::Certificate(b)) => {
                    bool::from(a.ct_eq(b))
                }
                _ => false,
            };
            if same {
                found = Some(caller);
            }
        }
        found
    }
}

/// The SHA-256 of a key, as the configuration stores it.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new random key (256 bits, URL-safe base64) and the configuration entry for it.
pub fn new_key(
    name: &str,
    permissions: BTreeSet<Permission>,
    tenants: Option<BTreeSet<String>>,
) -> anyhow::Result<(String, CallerEntry)> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| anyhow::anyhow!("the system's random generator failed: {error}"))?;
    let key = format!(
        "bok_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let entry = CallerEntry {
        name: name.to_owned(),
        key_sha256: hex::encode(hash_key(&key)),
        certificate_sha256: String::new(),
        permissions,
        tenants,
    };
    Ok((key, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callers() -> (Callers, String, String) {
        let (reader_key, reader) = new_key(
            "reader",
            [Permission::Read].into_iter().collect(),
            Some(["gp".to_owned()].into_iter().collect()),
        )
        .unwrap();
        let (admin_key, admin) = new_key(
            "admin",
            [Permission::Read, Permission::Write].into_iter().collect(),
            None,
        )
        .unwrap();
        let json = serde_json::to_string(&vec![reader, admin]).unwrap();
        (Callers::parse(&json).unwrap(), reader_key, admin_key)
    }

    #[test]
    fn keys_authenticate_their_caller_and_nothing_else() {
        let (callers, reader_key, admin_key) = callers();
        assert_eq!(callers.authenticate(&reader_key).unwrap().name, "reader");
        assert_eq!(callers.authenticate(&admin_key).unwrap().name, "admin");
        assert!(callers.authenticate("bok_guess").is_none());
        assert!(callers.authenticate("").is_none());
        assert!(reader_key.starts_with("bok_") && reader_key.len() > 40);
    }

    #[test]
    fn permissions_and_tenants_are_both_checked() {
        let (callers, reader_key, admin_key) = callers();
        let reader = callers.authenticate(&reader_key).unwrap();
        let gp = TenantId::parse("t", "gp").unwrap();
        let hd = TenantId::parse("t", "hd").unwrap();
        assert!(reader.authorize(Permission::Read, Some(&gp)).is_ok());
        assert!(reader.authorize(Permission::Read, Some(&hd)).is_err());
        assert!(reader.authorize(Permission::Write, Some(&gp)).is_err());
        assert!(reader.may_see("gp") && !reader.may_see("hd"));
        let admin = callers.authenticate(&admin_key).unwrap();
        assert!(admin.authorize(Permission::Write, Some(&hd)).is_ok());
        assert!(
            admin
                .authorize(Permission::PaymentConfiguration, None)
                .is_err()
        );
    }

    #[test]
    fn configuration_errors_name_the_caller_never_a_key() {
        let hash = "a".repeat(64);
        let bad = |json: &str| Callers::parse(json).unwrap_err().to_string();
        assert!(bad("[]").contains("no callers"));
        assert!(bad("{}").contains("JSON array"));
        assert!(
            bad(&format!(
                r#"[{{"name":"x","key_sha256":"{hash}","permissions":[]}}]"#
            ))
            .contains("no permissions")
        );
        assert!(
            bad(r#"[{"name":"x","key_sha256":"secret-key-text","permissions":["read"]}]"#)
                .contains("64 hexadecimal")
        );
        assert!(
            !bad(r#"[{"name":"x","key_sha256":"secret-key-text","permissions":["read"]}]"#)
                .contains("secret-key-text")
        );
        assert!(
            bad(&format!(
                r#"[{{"name":"x","key_sha256":"{hash}","permissions":["read"],"tenants":["GP"]}}]"#
            ))
            .contains("tenant")
        );
        assert!(bad(&format!(
            r#"[{{"name":"x","key_sha256":"{hash}","permissions":["read"]}},{{"name":"x","key_sha256":"{hash}","permissions":["read"]}}]"#
        ))
        .contains("twice"));
        assert!(bad(&format!(
            r#"[{{"name":"x","key_sha256":"{hash}","permissions":["read"]}},{{"name":"y","key_sha256":"{hash}","permissions":["write"]}}]"#
        ))
        .contains("same key"));
        assert!(bad(&format!(
            r#"[{{"name":"x","key_sha256":"{hash}","certificate_sha256":"{hash}","permissions":["read"]}}]"#
        ))
        .contains("exactly one"));
    }
}
