//! The command line: `courier serve` and the client commands a user reaches for first. The client
//! commands' and `courier bench`'s arguments are `courier_tools`' types, named here only.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use courier_tools::{
    bench::BenchArgs,
    client::{ConsumeArgs, GroupsCommand, ProduceArgs, RegionsCommand, ServerArgs, TopicsCommand},
};

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
}
