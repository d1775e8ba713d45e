//! The command line: `courier serve` and the client commands a user reaches for first. The client
//! commands' and `courier bench`'s arguments are `courier_tools`' types, named here only.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use courier_tools::{
    bench::BenchArgs,
    client::{ConsumeArgs, GroupsCommand, ProduceArgs, RegionsCommand, ServerArgs, TopicsCommand},
};

use crate::config::LogFormat;

/// Courier: a stateless gRPC gateway in front of Kafka (or its own embedded log).
#[derive(Debug, Parser)]
#[command(name = "courier", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Write records to a topic through a running gateway (values as arguments, or one per stdin line).
    Produce(ProduceArgs),
    /// Read records through a running gateway and print them, acknowledging each once printed.
    Consume(ConsumeArgs),
    /// Manage topics.
    Topics {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Inspect consumer groups.
    Groups {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: GroupsCommand,
    },
    /// See and steer region routing (log.kind = "regions"): each region's health, where writes and
    /// reads go, the last switch; pin traffic to a region or hand it back to the health checks.
    Regions {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: Option<RegionsCommand>,
    },
    /// Check a config file without running the gateway.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Measure throughput and ack latency (see BENCHMARKS.md).
    Bench(BenchArgs),
    /// Print a line for the users file (`[auth] users_file`): `name:argon2-hash[:roles]`; the
    /// password is read from stdin.
    Passwd {
        /// User name.
        name: String,
        /// A role to give the user (repeat for more): `admin` may use the Admin service and
        /// reach internal topics; policy rules can name any role.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Config file (TOML). Without it, ./courier.toml is read if present.
    #[arg(long, short, env = "COURIER_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Override grpc.listen.
    #[arg(long)]
    pub(crate) grpc_listen: Option<SocketAddr>,
    /// Override mqtt.listen.
    #[arg(long)]
    pub(crate) mqtt_listen: Option<SocketAddr>,
    /// Override amqp.listen.
    #[arg(long)]
    pub(crate) amqp_listen: Option<SocketAddr>,
    /// Override http.listen.
    #[arg(long)]
    pub(crate) http_listen: Option<SocketAddr>,
    /// Override log.data_dir (embedded log).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Override telemetry.log_format: `text`, or `json` for log pipelines.
    #[arg(long, value_enum)]
    pub(crate) log_format: Option<LogFormat>,
}

/// `courier config` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Load a config as `courier serve` would (defaults, the file, COURIER_* variables) and check
    /// it as serve does before opening anything, then print what it sets up: the log, the
    /// listeners (named as in the ready line) and the files it reads. Binds and opens nothing;
    /// exits non-zero with the reason (naming the key) if serve would refuse the config.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Config file (TOML). Without it, ./courier.toml is read if present.
    #[arg(long, short, env = "COURIER_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Also load the files the config names (users, policy, JWKS, TLS certificates and keys) with
    /// the gateway's own loaders, so a missing or bad one fails the check. Without it they are
    /// only listed: a config can be checked away from the Secrets its files come from.
    #[arg(long)]
    pub(crate) files: bool,
    /// Output: `text`, or `json` (the summary and the whole config with every default filled in;
    /// it holds what the file holds, passwords in `log.properties` included).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub(crate) format: String,
}
