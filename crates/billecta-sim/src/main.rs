//! `billecta-sim`: the Billecta simulator as a process, for running the service or a client by hand
//! against something that behaves like Billecta. Prints the base URL once it listens; stops
//! gracefully on SIGTERM or SIGINT. See the crate's `README.md`.

use billecta_sim::{self as simulator, ApiUsers, Environment, FaultRule, SignIn, SimulatorConfig};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EnvironmentArg {
    Test,
    Production,
}

impl From<EnvironmentArg> for Environment {
    fn from(value: EnvironmentArg) -> Self {
        match value {
            EnvironmentArg::Test => Environment::Test,
            EnvironmentArg::Production => Environment::Production,
        }
    }
}

/// A stateful simulator of Billecta's REST API.
#[derive(Debug, Parser)]
#[command(name = "billecta-sim", version)]
struct Cli {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "BILLECTA_SIM_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Which Billecta environment to behave like (test: one user per account).
    #[arg(long, value_enum, default_value = "test")]
    environment: EnvironmentArg,

    /// Seed of the generator that decides fault probabilities.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// A fault rule, repeatable: KIND[=VALUE][@ROUTE][,p=P][,times=N], for example
    /// "status=503@POST /v1/creditors/creditor,p=0.3,times=2", "status=502:html", "latency=200",
    /// "rate-limit=2", "hang", "reset".
    #[arg(long = "fault", value_name = "RULE")]
    faults: Vec<FaultRule>,

    /// How long a SecureToken lives, in days.
    #[arg(long, default_value_t = 365)]
    token_lifetime_days: u64,

    /// What POST /v1/authentication/apiauthenticate does with the user's live token: return it, or
    /// issue a new one that invalidates it. Changeable at run time with PUT /admin/settings.
    #[arg(
        long,
        env = "BILLECTA_SIM_SIGN_IN",
        default_value = "returns-live-token",
        // The names are listed here for `--help`; `SignIn`'s own parser reads them, so the flag
        // and the library cannot disagree on what a name means.
        value_parser = PossibleValuesParser::new(["returns-live-token", "issues-new-token"])
            .try_map(|name| name.parse::<SignIn>()),
    )]
    sign_in: SignIn,

    /// How Billecta treats API users (IsApiUser): made through the users API and signing in with
    /// their password; made there but refused at apiauthenticate, so that only an administrator's
    /// POST /v1/authentication/securetoken/{UserPublicId} gives one a token; or refused by
    /// POST /v1/users/user (403), made in the portal only. Changeable at run time with
    /// PUT /admin/settings.
    #[arg(
        long,
        env = "BILLECTA_SIM_API_USERS",
        default_value = "sign-in-with-password",
        // As for --sign-in: listed for `--help`, read by `ApiUsers`'s own parser.
        value_parser = PossibleValuesParser::new([
            "sign-in-with-password",
            "token-from-administrator",
            "portal-only",
        ])
        .try_map(|name| name.parse::<ApiUsers>()),
    )]
    api_users: ApiUsers,

    /// Log filter (tracing-subscriber EnvFilter syntax).
    #[arg(long, env = "BILLECTA_SIM_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log)?)
        .with_writer(std::io::stderr)
        .init();
    for rule in &cli.faults {
        tracing::info!(rule = %rule, "fault rule");
    }
    let running = simulator::start(SimulatorConfig {
        listen: cli.listen,
        environment: cli.environment.into(),
        seed: cli.seed,
        faults: cli.faults,
        token_lifetime: Duration::from_secs(cli.token_lifetime_days.saturating_mul(24 * 60 * 60)),
        sign_in: cli.sign_in,
        api_users: cli.api_users,
    })
    .await?;
    println!("{}", running.base_url());
    wait_for_signal().await?;
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        result = tokio::signal::ctrl_c() => {
            result?;
            tracing::info!("SIGINT received");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn fault_flags_parse_and_bad_ones_are_refused() {
        let cli = Cli::try_parse_from([
            "billecta-sim",
            "--fault",
            "status=503@POST /v1/creditors/creditor,p=0.3,times=2",
            "--fault",
            "latency=200",
            "--seed",
            "9",
            "--environment",
            "production",
        ])
        .unwrap();
        assert_eq!(cli.faults.len(), 2);
        assert_eq!(cli.seed, 9);
        assert_eq!(cli.environment, EnvironmentArg::Production);
        let error = Cli::try_parse_from(["billecta-sim", "--fault", "status=404"]).unwrap_err();
        assert!(error.to_string().contains("500 to 599"), "{error}");
    }

    #[test]
    fn the_sign_in_flag_parses_both_modes_and_defaults_to_the_live_token() {
        for mode in [SignIn::ReturnsLiveToken, SignIn::IssuesNewToken] {
            let name = mode.to_string();
            let cli = Cli::try_parse_from(["billecta-sim", "--sign-in", &name]).unwrap();
            assert_eq!(cli.sign_in, mode, "--sign-in {name}");
        }
        let error = Cli::try_parse_from(["billecta-sim", "--sign-in", "ISSUES_NEW_TOKEN"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("returns-live-token") && error.contains("issues-new-token"),
            "{error}"
        );
        let command = Cli::command();
        let flag = command
            .get_arguments()
            .find(|argument| argument.get_long() == Some("sign-in"))
            .unwrap();
        assert_eq!(
            flag.get_env().and_then(|name| name.to_str()),
            Some("BILLECTA_SIM_SIGN_IN")
        );
        // Read from the definition, not by parsing no flags: a BILLECTA_SIM_SIGN_IN in the
        // environment the tests run in would stand in for the default.
        let default: Vec<_> = flag.get_default_values().iter().collect();
        assert_eq!(default, ["returns-live-token"]);
        assert_eq!(
            "returns-live-token".parse::<SignIn>(),
            Ok(SignIn::default())
        );
    }

    #[test]
    fn the_api_users_flag_parses_every_mode_and_defaults_to_signing_in_with_a_password() {
        for mode in [
            ApiUsers::SignInWithPassword,
            ApiUsers::TokenFromAdministrator,
            ApiUsers::PortalOnly,
        ] {
            let name = mode.to_string();
            let cli = Cli::try_parse_from(["billecta-sim", "--api-users", &name]).unwrap();
            assert_eq!(cli.api_users, mode, "--api-users {name}");
        }
        let error = Cli::try_parse_from(["billecta-sim", "--api-users", "PORTAL_ONLY"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sign-in-with-password")
                && error.contains("token-from-administrator")
                && error.contains("portal-only"),
            "{error}"
        );
        let command = Cli::command();
        let flag = command
            .get_arguments()
            .find(|argument| argument.get_long() == Some("api-users"))
            .unwrap();
        assert_eq!(
            flag.get_env().and_then(|name| name.to_str()),
            Some("BILLECTA_SIM_API_USERS")
        );
        // From the definition, for the reason given for --sign-in above.
        let default: Vec<_> = flag.get_default_values().iter().collect();
        assert_eq!(default, ["sign-in-with-password"]);
        assert_eq!(
            "sign-in-with-password".parse::<ApiUsers>(),
            Ok(ApiUsers::default())
        );
    }
}
