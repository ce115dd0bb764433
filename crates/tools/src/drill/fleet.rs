//! The service processes a drill runs against, started from the real binary so that a kill is a real
//! `kill -9`, and the TCP proxy a drill can put between them and PostgreSQL to take the database away.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// How long a started process may take to report SERVING.
const START_LIMIT: Duration = Duration::from_secs(30);

/// One service process: a fixed address that survives restarts, and its log file.
struct Replica {
    address: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

/// The service processes of a drill, all on one database.
pub struct Fleet {
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    replicas: Vec<Mutex<Replica>>,
}

impl Fleet {
    /// `count` replicas of `binary`, each started with `args` and `env` plus its own `--listen`;
    /// logs go to `<log_dir>/replica-<n>.log`. Nothing is started yet.
    pub fn new(
        binary: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        count: usize,
        log_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let mut replicas = Vec::with_capacity(count);
        for index in 0..count {
            replicas.push(Mutex::new(Replica {
                address: free_address()?,
                child: None,
                log: log_dir.join(format!("replica-{index}.log")),
            }));
        }
        Ok(Self {
            binary,
            args,
            env,
            replicas,
        })
    }

    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// The gRPC address of replica `index`, stable across restarts.
    pub async fn address(&self, index: usize) -> SocketAddr {
        self.replicas[index].lock().await.address
    }

    /// Starts replica `index` and waits until it reports SERVING; returns how long that took.
    pub async fn start(&self, index: usize) -> anyhow::Result<Duration> {
        let mut replica = self.replicas[index].lock().await;
        if replica.child.is_some() {
            bail!("replica {index} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&replica.log)
            .with_context(|| format!("opening {}", replica.log.display()))?;
        let started = Instant::now();
        let child = Command::new(&self.binary)
            .args(&self.args)
            .arg("--listen")
            .arg(replica.address.to_string())
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        replica.child = Some(child);
        let channel = channel(replica.address);
        loop {
            if serving(&channel).await {
                return Ok(started.elapsed());
            }
            if let Some(child) = replica.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                replica.child = None;
                bail!(
                    "replica {index} exited with {status} before serving; see {}",
                    replica.log.display()
                );
            }
            if started.elapsed() > START_LIMIT {
                bail!("replica {index} did not report SERVING within {START_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The resident memory of replica `index` now, in KiB (Linux), if it runs.
    pub async fn resident_kib(&self, index: usize) -> Option<u64> {
        let replica = self.replicas[index].lock().await;
        let pid = replica.child.as_ref()?.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
    }

    /// The CPU time replica `index` has used so far (user and system, Linux), if it runs.
    pub async fn cpu_time(&self, index: usize) -> Option<Duration> {
        let replica = self.replicas[index].lock().await;
        let pid = replica.child.as_ref()?.id()?;
        process_cpu_time(&pid.to_string())
    }

    /// The CPU time all running replicas have used so far.
    pub async fn cpu_time_total(&self) -> Option<Duration> {
        let mut total = Duration::ZERO;
        for index in 0..self.len() {
            total += self.cpu_time(index).await?;
        }
        Some(total)
    }

    /// `kill -9` of replica `index`: no shutdown of any kind, as a crash or an OOM kill.
    pub async fn kill(&self, index: usize) -> anyhow::Result<()> {
        let mut replica = self.replicas[index].lock().await;
        if let Some(mut child) = replica.child.take() {
            child.kill().await.context("killing a replica")?;
        }
        Ok(())
    }

    /// Stops every replica the way an orchestrator does (SIGTERM), waiting for each to exit.
    pub async fn stop(&self) {
        for replica in &self.replicas {
            let mut replica = replica.lock().await;
            if let Some(mut child) = replica.child.take() {
                if let Some(pid) = child.id() {
                    let _ = Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status()
                        .await;
                }
                if tokio::time::timeout(Duration::from_secs(15), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }
}

/// A free loopback address, found by binding port 0 and letting go of it.
fn free_address() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A lazily connecting channel to `address` that reconnects by itself after a restart.
pub fn channel(address: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{address}"))
        .expect("a socket address is a valid URI")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(30))
        .connect_lazy()
}

/// Whether the server behind `channel` reports SERVING right now.
pub async fn serving(channel: &Channel) -> bool {
    let mut client = HealthClient::new(channel.clone());
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(Duration::from_millis(500));
    matches!(
        client.check(request).await,
        Ok(response) if response.get_ref().status == ServingStatus::Serving as i32
    )
}

/// A TCP proxy in front of a database that can be cut (every open connection dropped, new ones
/// closed at once, as when the server is stopped) and restored.
pub struct CuttableProxy {
    address: SocketAddr,
    state: Arc<std::sync::Mutex<ProxyState>>,
    stop: CancellationToken,
}

struct ProxyState {
    up: bool,
    /// Cancelled when the proxy is cut: every connection opened before watches it.
    connections: CancellationToken,
}

impl CuttableProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state = Arc::new(std::sync::Mutex::new(ProxyState {
            up: true,
            connections: CancellationToken::new(),
        }));
        let stop = CancellationToken::new();
        let accept_state = state.clone();
        let accept_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = accept_stop.cancelled() => return,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let cut = {
                    let state = accept_state.lock().expect("proxy state");
                    state.up.then(|| state.connections.clone())
                };
                let Some(cut) = cut else {
                    drop(inbound);
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        Ok(Self {
            address,
            state,
            stop,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Drops every connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        let mut state = self.state.lock().expect("proxy state");
        state.up = false;
        state.connections.cancel();
    }

    pub fn restore(&self) {
        let mut state = self.state.lock().expect("proxy state");
        state.up = true;
        state.connections = CancellationToken::new();
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .connections
            .cancel();
    }
}

/// The CPU time (user and system) process `pid` has used, from `/proc/<pid>/stat` (Linux; `self`
/// for this process).
pub fn process_cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    // utime and stime are fields 14 and 15: the 12th and 13th after the name.
    let user: u64 = fields.nth(11)?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    // In USER_HZ ticks, which Linux fixes at 100 per second for user space.
    Some(Duration::from_millis((user + system) * 10))
}
