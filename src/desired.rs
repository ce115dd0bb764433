//! How the setup asked for maps onto Billecta's creditor: what a new creditor is created with, how
//! company settings are written into an existing one without losing anything else on it, and how to
//! read back whether Billecta approved the bankgiro for payments.

use crate::domain::onboarding::CompanySettings;
use crate::domain::swedish::{Bankgiro, OrganisationNumber};
use crate::secret::Secret;
use billecta_client::model::{
    Creditor, CreditorBankInfo, OutgoingBankgiro, PaymentMethod, PaymentMethodPriority,
    PaymentMethodType, User, UserRight,
};

/// A new creditor: organisation number and company name, enabled, Swedish. Billecta reads a missing
/// boolean as false, so the non-nullable ones are sent explicitly.
pub fn new_creditor(organisation_number: &OrganisationNumber, company_name: &str) -> Creditor {
    Creditor {
        org_no: Some(organisation_number.as_str().to_owned()),
        name: Some(company_name.to_owned()),
        country_code: Some("SE".to_owned()),
        is_enabled: Some(true),
        use_cent_rounding: Some(false),
        uses_client_fund_for_invoicing: Some(false),
        ..Creditor::default()
    }
}

/// A dedicated API user for one creditor: enabled, not an administrator, with the rights Payway's
/// payment code needs on that creditor alone (read and write it, manage and attest its invoices,
/// manage their payments).
pub fn new_api_user(
    username: &str,
    full_name: &str,
    password: &Secret,
    creditor_public_id: &str,
) -> User {
    User {
        username: Some(username.to_owned()),
        email: Some(username.to_owned()),
        full_name: Some(full_name.to_owned()),
        password: Some(password.clone()),
        is_enabled: Some(true),
        is_api_user: Some(true),
        is_administrator: Some(false),
        can_manage_creditors: Some(false),
        rights: Some(vec![UserRight {
            creditor_public_id: Some(creditor_public_id.to_owned()),
            can_read_creditor: Some(true),
            can_write_creditor: Some(true),
            can_manage_invoices: Some(true),
            can_attest_invoice: Some(true),
            can_manage_invoice_payments: Some(true),
            ..UserRight::default()
        }]),
        ..User::default()
    }
}

/// Writes the address and both bankgiros into a creditor read from Billecta. The bankgiro for
/// invoicing becomes the primary payment method (an earlier primary becomes an alternative); the
/// bankgiro for payments is added as an active outgoing bankgiro. Other payment methods, outgoing
/// bankgiros and fields are kept.
pub fn apply_company_settings(creditor: &mut Creditor, settings: &CompanySettings) {
    creditor.address = Some(settings.address.clone());
    creditor.zip_code = Some(settings.zip_code.clone());
    creditor.city = Some(settings.city.clone());
    creditor.country_code = Some(settings.country_code.clone());
    let bank = creditor
        .creditor_bank_info
        .get_or_insert_with(|| CreditorBankInfo {
            uses_client_fund: Some(false),
            ..CreditorBankInfo::default()
        });
    // The legacy single payment method, which older parts of Billecta still read.
    bank.payment_method = Some(PaymentMethodType::BankGiro);
    bank.bankgiro_no = Some(settings.bankgiro_invoicing.clone());

    let invoicing = parse(&settings.bankgiro_invoicing);
    let methods = bank.payment_methods.get_or_insert_with(Vec::new);
    let mut found = false;
    for method in methods.iter_mut() {
        let same = method.payment_method == Some(PaymentMethodType::BankGiro)
            && method
                .bankgiro_no
                .as_deref()
                .is_some_and(|number| matches(&invoicing, number));
        if same {
            method.priority = Some(PaymentMethodPriority::Primary);
            found = true;
        } else if method.priority == Some(PaymentMethodPriority::Primary) {
            method.priority = Some(PaymentMethodPriority::Alternative);
        }
    }
    if !found {
        methods.insert(
            0,
            PaymentMethod {
                priority: Some(PaymentMethodPriority::Primary),
                payment_method: Some(PaymentMethodType::BankGiro),
                bankgiro_no: Some(settings.bankgiro_invoicing.clone()),
                verified: Some(false),
                ..PaymentMethod::default()
            },
        );
    }

    let payments = parse(&settings.bankgiro_payments);
    let outgoing = bank
        .creditor_outgoing_bankgiroes
        .get_or_insert_with(Vec::new);
    match outgoing.iter_mut().find(|entry| {
        entry
            .bankgiro_no
            .as_deref()
            .is_some_and(|number| matches(&payments, number))
    }) {
        Some(entry) => entry.is_active = Some(true),
        None => outgoing.push(OutgoingBankgiro {
            bankgiro_no: Some(settings.bankgiro_payments.clone()),
            is_active: Some(true),
            bankgiro_approved: Some(false),
            description: Some("Payments".to_owned()),
            ..OutgoingBankgiro::default()
        }),
    }
}

/// Whether Billecta shows the bankgiro for payments as approved.
pub fn payments_bankgiro_approved(creditor: &Creditor, bankgiro_payments: &str) -> bool {
    let wanted = parse(bankgiro_payments);
    creditor
        .creditor_bank_info
        .as_ref()
        .and_then(|bank| bank.creditor_outgoing_bankgiroes.as_ref())
        .is_some_and(|entries| {
            entries.iter().any(|entry| {
                entry
                    .bankgiro_no
                    .as_deref()
                    .is_some_and(|number| matches(&wanted, number))
                    && entry.bankgiro_approved == Some(true)
            })
        })
}

/// Stored settings hold bankgiros that were validated on the way in.
fn parse(bankgiro: &str) -> Option<Bankgiro> {
    Bankgiro::parse("bankgiro", bankgiro).ok()
}

fn matches(wanted: &Option<Bankgiro>, billecta: &str) -> bool {
    wanted
        .as_ref()
        .is_some_and(|bankgiro| bankgiro.matches(billecta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> CompanySettings {
        CompanySettings {
            address: "Storgatan 1".into(),
            zip_code: "903 26".into(),
            city: "Umeå".into(),
            country_code: "SE".into(),
            bankgiro_invoicing: "5050-1055".into(),
            bankgiro_payments: "5402-9681".into(),
            bankgiro_payments_approved: false,
        }
    }

    #[test]
    fn settings_go_in_without_losing_anything_else() {
        let mut creditor: Creditor = serde_json::from_value(json!({
            "Name": "Tidningen AB",
            "VatNumber": "SE556036079301",
            "SomethingNew": 1,
            "CreditorBankInfo": {
                "PaymentMethods": [
                    {"Priority": "Primary", "PaymentMethod": "PlusGiro", "PlusgiroNo": "12345-6"}
                ],
                "CreditorOutgoingBankgiroes": [
                    {"BankgiroNo": "297-3675", "IsActive": true, "BankgiroApproved": true}
                ]
            }
        }))
        .unwrap();
        apply_company_settings(&mut creditor, &settings());
        let wire = serde_json::to_value(&creditor).unwrap();
        assert_eq!(wire["VatNumber"], "SE556036079301");
        assert_eq!(wire["SomethingNew"], 1);
        assert_eq!(wire["City"], "Umeå");
        let methods = &wire["CreditorBankInfo"]["PaymentMethods"];
        assert_eq!(methods[0]["BankgiroNo"], "5050-1055");
        assert_eq!(methods[0]["Priority"], "Primary");
        assert_eq!(methods[1]["PaymentMethod"], "PlusGiro");
        assert_eq!(methods[1]["Priority"], "Alternative");
        let outgoing = &wire["CreditorBankInfo"]["CreditorOutgoingBankgiroes"];
        assert_eq!(outgoing.as_array().unwrap().len(), 2);
        assert_eq!(outgoing[1]["BankgiroNo"], "5402-9681");
        assert!(!payments_bankgiro_approved(&creditor, "5402-9681"));
        assert!(payments_bankgiro_approved(&creditor, "2973675"));
    }

    #[test]
    fn applying_twice_changes_nothing_more() {
        let mut creditor = new_creditor(
            &OrganisationNumber::parse("org", "556036-0793").unwrap(),
            "Tidningen AB",
        );
        apply_company_settings(&mut creditor, &settings());
        let once = creditor.clone();
        apply_company_settings(&mut creditor, &settings());
        assert_eq!(creditor, once);
    }
}
