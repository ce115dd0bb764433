//! A full disk under SQLite: the service keeps serving reads, refuses each write with UNAVAILABLE
//! and a reason an operator can act on (changing nothing), says so in its health, and takes writes
//! again once space is freed, without a restart. The database lives on a small tmpfs of the test's
//! own, which needs root (as CI runs); elsewhere the test says it is skipped.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A tmpfs of a few MiB mounted on a folder of the test's own; unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|status| status.success());
        if mounted {
            return Some(Self { dir });
        }
        let ci = std::env::var("CI").is_ok_and(|ci| ci == "true");
        assert!(
            !ci,
            "CI=true but a tmpfs cannot be mounted (root is needed): the full-disk test would be skipped"
        );
        eprintln!("a tmpfs cannot be mounted here (root is needed): skipping the full-disk test");
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills what is left of the disk with a file; returns its path.
fn fill(disk: &SmallDisk) -> PathBuf {
    let filler = disk.path().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while file.write_all(&chunk).is_ok() {}
    // The last partial chunk: byte by byte until nothing fits.
    while file.write_all(&[0]).is_ok() {}
    filler
}

async fn health(server: &TestServer, service: &str) -> ServingStatus {
    let status = HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

/// Waits up to 10 s for the health entry `service` to be `expected`.
async fn health_becomes(server: &TestServer, service: &str, expected: ServingStatus) {
    let start = Instant::now();
    while health(server, service).await != expected {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "health of {service:?} is not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_full_disk_refuses_writes_serves_reads_and_recovers_without_a_restart() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let database = disk.path().join("onboarding.sqlite3");
    let server = TestServer::start_with(&Backend::Sqlite, |config| {
        config.database = database.display().to_string();
    })
    .await;
    let kept = create(&server, "kept", proto::Environment::Test).await.name;
    let filler = fill(&disk);

    // Writes until one is refused: the log may still have room for a few.
    let mut refused = None;
    for i in 0..500 {
        let tenant = format!("t{i}");
        match server
            .client
            .clone()
            .create_onboarding(create_request(&tenant, proto::Environment::Test))
            .await
        {
            Ok(_) => continue,
            Err(status) => {
                refused = Some((tenant, status));
                break;
            }
        }
    }
    let (tenant, status) = refused.expect("a write is refused once the disk is full");
    assert_refused(&status, Code::Unavailable, "DATABASE_DISK_FULL");
    assert!(status.message().contains("disk"), "{}", status.message());
    let details = tonic_types::StatusExt::get_error_details(&status);
    assert!(details.retry_info().is_some(), "a retry delay is given");
    let refused_name = name(&tenant, "test");
    assert_eq!(
        get(&server, &refused_name).await.unwrap_err().code(),
        Code::NotFound,
        "the refused write left nothing"
    );

    // Reads go on; health says the database cannot take writes, and the service still serves.
    assert_eq!(get(&server, &kept).await.unwrap().name, kept);
    health_becomes(&server, "database", ServingStatus::NotServing).await;
    assert_eq!(health(&server, "").await, ServingStatus::Serving);
    assert_eq!(
        health(&server, "payway.billecta.onboarding.v1.OnboardingService").await,
        ServingStatus::Serving
    );

    // Space is freed: health recovers by itself, and the refused write goes through on retry.
    std::fs::remove_file(filler).unwrap();
    health_becomes(&server, "database", ServingStatus::Serving).await;
    server
        .client
        .clone()
        .create_onboarding(create_request(&tenant, proto::Environment::Test))
        .await
        .expect("writes are taken again");
    assert_eq!(
        get(&server, &refused_name).await.unwrap().name,
        refused_name
    );
    server.shutdown.cancel();
    let _ = server.task.await;
}
