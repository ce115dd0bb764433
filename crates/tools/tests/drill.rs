//! Reliability drills at a size CI can afford (RELIABILITY.md records the full-size runs): tenants
//! provisioned from nothing to READY through the real service binary while a quarter of Billecta's
//! answers are faults, replicas are killed with `kill -9`, and (on PostgreSQL) two callers race on
//! every tenant through two replicas sharing the database while it is taken away. Every tenant must end READY, with one creditor per organisation
//! number in Billecta and a whole audit trail.

use billecta_sim::SignIn;
use billecta_tools::drill::{self, DrillDatabase, DrillSettings, OutageMethod, OutagePlan};
use std::time::Duration;

/// Drills against the service binary the workspace's build made (`cargo test --workspace` builds
/// it; so does `cargo build`).
fn settings(dir: &tempfile::TempDir) -> DrillSettings {
    let binary = drill::service_binary().expect("the test's own path");
    assert!(
        binary.exists(),
        "{} is missing: build the workspace first (cargo build)",
        binary.display()
    );
    let mut settings = DrillSettings::new(binary, dir.path().to_owned());
    settings.tenants = 24;
    settings.concurrency = 12;
    settings.failure_rate = 0.25;
    settings.latency = Duration::from_millis(10);
    settings.patience = Duration::from_secs(240);
    settings
}

/// Asserts that the drill kept every promise, showing the whole report when it did not.
fn assert_passed(report: &drill::DrillReport) {
    assert!(report.problems().is_empty(), "{report}");
    assert_eq!(report.ready, report.tenants, "{report}");
    let faulted = report.billecta_faulted as f64 / report.billecta_requests as f64;
    assert!(
        faulted >= 0.2,
        "at least a fifth of Billecta's answers are faults: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_kill_9_on_sqlite_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(&dir);
    settings.kills = 2;
    // Billecta's harsher possible answer: every sign-in replaces the user's token (the PostgreSQL
    // drill runs with the other).
    settings.sign_in = SignIn::IssuesNewToken;
    let report = drill::run(settings).await.expect("the drill runs");
    assert_passed(&report);
    assert_eq!(report.restarts.len(), 2, "{report}");
    assert_eq!(report.creditors, 24);
    assert_eq!(report.duplicate_creditors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_callers_on_two_replicas_survive_a_kill_and_the_database_going_away() {
    let Some(url) = std::env::var("TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
    else {
        eprintln!("TEST_POSTGRES_URL is not set: the PostgreSQL drill is skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(&dir);
    settings.replicas = 2;
    // Two callers race on every tenant, one through each replica.
    settings.drivers_per_tenant = 2;
    settings.kills = 1;
    settings.database = DrillDatabase::Postgres { admin_url: url };
    settings.outage = Some(OutagePlan {
        after_share: 0.3,
        length: Duration::from_secs(3),
        method: OutageMethod::Proxy,
    });
    let report = drill::run(settings).await.expect("the drill runs");
    assert_passed(&report);
    let outage = report.outage.as_ref().expect("the outage happened");
    assert!(
        outage.not_serving_after.is_some(),
        "health turned NOT_SERVING while the database was away: {report}"
    );
    assert!(outage.serving_again_after.is_some(), "{report}");
    assert_eq!(outage.database_errors_outside, 0, "{report}");
}
