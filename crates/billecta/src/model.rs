//! Billecta's view models as they travel on the wire: PascalCase names (with Billecta's acronym
//! spellings such as `LogoURL`, `GLN`, `IBAN`), enums as strings, `null` where the schema allows it.
//!
//! Two rules keep us compatible with a Billecta that changes under us:
//! - Fields we do not know are kept in `extra` and sent back unchanged. Billecta's `PUT` replaces the
//!   whole object, so dropping a field we did not understand would erase it.
//! - Enum values we do not know are kept as [`WireEnum::Other`] text and sent back as they came.
//!
//! Fields are `Option` and left out of a request when `None`; the schemas have no required fields and
//! non-nullable fields must then be absent rather than `null`.

use crate::secret::Secret;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// An enum Billecta sends and accepts as a string, with room for values added after this was written.
pub trait WireEnum: Sized {
    fn from_wire(text: &str) -> Self;
    fn as_wire(&self) -> &str;
}

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal = $number:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)+
            /// A value Billecta added after this client was written; sent back unchanged.
            Other(String),
        }

        impl WireEnum for $name {
            fn from_wire(text: &str) -> Self {
                match text {
                    $($text => $name::$variant,)+
                    other => $name::Other(other.to_owned()),
                }
            }

            fn as_wire(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Other(text) => text,
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_wire())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                // Billecta's schemas declare enums as integers with names; the API sends the names.
                // Accept the schema's integers too, read as the names they stand for.
                match Value::deserialize(deserializer)? {
                    Value::String(text) => Ok($name::from_wire(&text)),
                    Value::Number(number) => match number.as_i64() {
                        $(Some($number) => Ok($name::$variant),)+
                        _ => Ok($name::Other(number.to_string())),
                    },
                    other => Err(serde::de::Error::custom(format!(
                        "expected a {} name, found {other}",
                        stringify!($name)
                    ))),
                }
            }
        }
    };
}

wire_enum! {
    /// `CreditorPaymentMethodTypeView`: how debtors pay a creditor.
    PaymentMethodType {
        BankGiro => "BankGiro" = 0,
        PlusGiro => "PlusGiro" = 1,
        BankAccount => "BankAccount" = 2,
        Iban => "IBAN" = 3,
        Unknown => "Unknown" = -1,
    }
}

wire_enum! {
    /// `CreditorPaymentMethodPriorityTypeView`.
    PaymentMethodPriority {
        Primary => "Primary" = 0,
        Alternative => "Alternative" = 1,
        Unknown => "Unknown" = -1,
    }
}

wire_enum! {
    /// `DeliveryMethodTypeView`: how invoices reach debtors.
    DeliveryMethod {
        Email => "Email" = 0,
        Mail => "Mail" = 1,
        Manually => "Manually" = 2,
        Sms => "SMS" = 3,
        EInvoice => "EInvoice" = 4,
        Kivra => "Kivra" = 5,
        Avy => "Avy" = 6,
        Unknown => "Unknown" = -1,
    }
}

wire_enum! {
    /// `LanguageTypeView`.
    Language {
        Swedish => "SV" = 0,
        English => "EN" = 1,
        Finnish => "FI" = 2,
    }
}

/// `SecureTokenView`. The token is a [`crate::secret::Secret`] once it leaves the client; this wire form
/// lives only as long as the response is being decoded.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SecureTokenView {
    pub value: Option<String>,
    pub expires: Option<String>,
}

/// `CreatedView`: what a create call answers.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreatedView {
    pub public_id: Option<String>,
}

/// `CreditorView`: the company that sends invoices.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Creditor {
    /// Billecta's id. Not sent on create: Billecta assigns it.
    pub creditor_public_id: Option<String>,
    pub org_no: Option<String>,
    pub name: Option<String>,
    pub creditor_bank_info: Option<CreditorBankInfo>,
    pub attention: Option<String>,
    pub care_of: Option<String>,
    pub address: Option<String>,
    pub address2: Option<String>,
    pub zip_code: Option<String>,
    pub city: Option<String>,
    /// ISO 3166-1 alpha-2, such as `SE`.
    pub country_code: Option<String>,
    pub phone: Option<String>,
    pub vat_number: Option<String>,
    pub residence: Option<String>,
    pub approved_company_tax: Option<bool>,
    pub give_all_users_full_rights_on_creditor: Option<bool>,
    #[serde(rename = "GLN")]
    pub gln: Option<String>,
    pub creditor_contact: Option<Contact>,
    pub creditor_claims_contact: Option<Contact>,
    pub creditor_signatory_contact: Option<Contact>,
    pub creditor_invoice_address: Option<InvoiceAddress>,
    pub is_enabled: Option<bool>,
    /// Digits only; the number the next invoice gets.
    pub next_invoice_number: Option<String>,
    #[serde(rename = "LogoURL")]
    pub logo_url: Option<String>,
    pub use_cent_rounding: Option<bool>,
    pub uses_client_fund_for_invoicing: Option<bool>,
    /// Fields this client does not know, kept so that an update sends them back.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `CreditorBankInfoView`: where debtors pay, and the bankgiros the creditor pays from.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreditorBankInfo {
    pub uses_client_fund: Option<bool>,
    /// The legacy single payment method; [`CreditorBankInfo::payment_methods`] is the current one.
    pub payment_method: Option<PaymentMethodType>,
    pub bankgiro_no: Option<String>,
    pub plusgiro_no: Option<String>,
    pub account_no: Option<String>,
    pub clearing_no: Option<String>,
    #[serde(rename = "EInvoiceFUI")]
    pub e_invoice_fui: Option<String>,
    #[serde(rename = "EInvoiceCUI")]
    pub e_invoice_cui: Option<String>,
    pub foreign_accounts: Option<Vec<ForeignAccount>>,
    /// Bankgiros for outgoing payments; Billecta's staff approve each one.
    pub creditor_outgoing_bankgiroes: Option<Vec<OutgoingBankgiro>>,
    pub payment_methods: Option<Vec<PaymentMethod>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `CreditorPaymentMethodView`: one way debtors can pay (note `IBAN`/`BIC` in capitals here).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PaymentMethod {
    pub priority: Option<PaymentMethodPriority>,
    pub payment_method: Option<PaymentMethodType>,
    pub bankgiro_no: Option<String>,
    pub plusgiro_no: Option<String>,
    pub clearing_no: Option<String>,
    pub account_no: Option<String>,
    #[serde(rename = "IBAN")]
    pub iban: Option<String>,
    #[serde(rename = "BIC")]
    pub bic: Option<String>,
    /// Set by Billecta.
    pub verified: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `CreditorOutgoingBankgiroView`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct OutgoingBankgiro {
    pub bankgiro_no: Option<String>,
    pub is_active: Option<bool>,
    /// Set by Billecta's customer service after a security review.
    pub bankgiro_approved: Option<bool>,
    pub description: Option<String>,
    pub bookkeeping_payment_mean_code: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `CreditorForeignAccountView` (note `Iban`/`Bic` in mixed case here).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ForeignAccount {
    pub currency_code: Option<String>,
    pub bank_name: Option<String>,
    pub iban: Option<String>,
    pub bic: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `CreditorContactView`, `CreditorClaimsContactView` and `CreditorSignatoryContactView` share a shape.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Contact {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `CreditorInvoiceAddressView`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InvoiceAddress {
    pub address: Option<String>,
    pub address2: Option<String>,
    pub zip_code: Option<String>,
    pub city: Option<String>,
    pub country_code: Option<String>,
    pub email: Option<String>,
    pub delivery_method: Option<DeliveryMethod>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `UserView`. The fields the onboarding reads or sets are typed; the rest travel in `extra`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct User {
    /// Billecta's id. Not sent on create: Billecta assigns it.
    pub user_public_id: Option<String>,
    pub username: Option<String>,
    pub email: Option<String>,
    pub full_name: Option<String>,
    pub language: Option<Language>,
    /// Write-only: Billecta never returns it. A [`Secret`], so that `Debug` never shows it.
    #[serde(with = "optional_secret")]
    pub password: Option<Secret>,
    pub is_enabled: Option<bool>,
    pub rights: Option<Vec<UserRight>>,
    pub is_administrator: Option<bool>,
    pub is_api_user: Option<bool>,
    pub can_manage_creditors: Option<bool>,
    pub last_login: Option<String>,
    pub created: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `UserRightView`: what a user may do with one creditor. The rights the onboarding checks or grants
/// are typed; the other flags travel in `extra`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UserRight {
    pub creditor_public_id: Option<String>,
    pub can_read_creditor: Option<bool>,
    pub can_write_creditor: Option<bool>,
    pub can_manage_invoices: Option<bool>,
    pub can_attest_invoice: Option<bool>,
    pub can_manage_invoice_payments: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl User {
    /// Whether this user may read the creditor, by its rights or as an administrator.
    pub fn can_read(&self, creditor_public_id: &str) -> bool {
        self.is_administrator == Some(true)
            || self.rights.iter().flatten().any(|right| {
                right
                    .creditor_public_id
                    .as_deref()
                    .is_some_and(|id| id.eq_ignore_ascii_case(creditor_public_id))
                    && right.can_read_creditor == Some(true)
            })
    }
}

/// A password on the wire: plain text in the JSON, a [`Secret`] everywhere else.
mod optional_secret {
    use crate::secret::Secret;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Secret>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(secret) => serializer.serialize_some(secret.expose()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Secret>, D::Error> {
        Ok(Option::<String>::deserialize(deserializer)?.map(Secret::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn acronym_fields_use_billectas_spelling() {
        let creditor = Creditor {
            gln: Some("7300000000000".into()),
            logo_url: Some("https://example.se/logo.png".into()),
            creditor_bank_info: Some(CreditorBankInfo {
                e_invoice_fui: Some("fui".into()),
                payment_methods: Some(vec![PaymentMethod {
                    iban: Some("SE45".into()),
                    bic: Some("ESSESESS".into()),
                    ..PaymentMethod::default()
                }]),
                foreign_accounts: Some(vec![ForeignAccount {
                    iban: Some("DE89".into()),
                    ..ForeignAccount::default()
                }]),
                ..CreditorBankInfo::default()
            }),
            ..Creditor::default()
        };
        let wire = serde_json::to_value(&creditor).unwrap();
        assert_eq!(wire["GLN"], "7300000000000");
        assert_eq!(wire["LogoURL"], "https://example.se/logo.png");
        let bank = &wire["CreditorBankInfo"];
        assert_eq!(bank["EInvoiceFUI"], "fui");
        assert_eq!(bank["PaymentMethods"][0]["IBAN"], "SE45");
        assert_eq!(bank["PaymentMethods"][0]["BIC"], "ESSESESS");
        assert_eq!(bank["ForeignAccounts"][0]["Iban"], "DE89");
    }

    #[test]
    fn unknown_fields_and_enum_values_survive_a_round_trip() {
        let wire = json!({
            "CreditorPublicId": "0b8f8c5e-7d0c-4a57-a0b7-3f1f1b6a2d11",
            "Name": "Tidningen AB",
            "BrandNewField": {"Nested": [1, 2]},
            "CreditorInvoiceAddress": {"DeliveryMethod": "CarrierPigeon"},
            "CreditorBankInfo": {
                "PaymentMethods": [{"Priority": "Primary", "PaymentMethod": "Swish", "Extra": true}]
            }
        });
        let creditor: Creditor = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(
            creditor
                .creditor_invoice_address
                .as_ref()
                .unwrap()
                .delivery_method,
            Some(DeliveryMethod::Other("CarrierPigeon".into()))
        );
        assert_eq!(serde_json::to_value(&creditor).unwrap(), wire);
    }

    #[test]
    fn absent_values_are_left_out_rather_than_sent_as_null() {
        let wire = serde_json::to_value(Creditor {
            name: Some("Tidningen AB".into()),
            ..Creditor::default()
        })
        .unwrap();
        assert_eq!(wire, json!({"Name": "Tidningen AB"}));
    }

    #[test]
    fn a_new_users_password_goes_on_the_wire_but_never_into_debug_output() {
        let user = User {
            username: Some("api@tidningen.se".into()),
            password: Some(Secret::new("hunter2-pass")),
            ..User::default()
        };
        assert_eq!(
            serde_json::to_value(&user).unwrap()["Password"],
            "hunter2-pass"
        );
        assert!(!format!("{user:?}").contains("hunter2"));
        let read: User = serde_json::from_value(json!({"Password": null})).unwrap();
        assert_eq!(read.password, None);
    }

    #[test]
    fn read_rights_come_from_rights_or_administration() {
        let id = "0b8f8c5e-7d0c-4a57-a0b7-3f1f1b6a2d11";
        let reader = User {
            rights: Some(vec![UserRight {
                creditor_public_id: Some(id.to_uppercase()),
                can_read_creditor: Some(true),
                ..UserRight::default()
            }]),
            ..User::default()
        };
        assert!(reader.can_read(id));
        assert!(!User::default().can_read(id));
        let administrator = User {
            is_administrator: Some(true),
            ..User::default()
        };
        assert!(administrator.can_read(id));
    }
}
