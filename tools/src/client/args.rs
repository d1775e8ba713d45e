//! The client commands' arguments, as clap parses them; the `courier` binary names these in its
//! `Command` enum. Only types here: the commands that take them are in the parent module.

use std::time::Duration;

use clap::{Args, Subcommand};

/// The gateway a client command talks to (`--server`, or `COURIER_SERVER`), and the credentials it
/// presents (`COURIER_TOKEN` or `--token`, or `--user` with `COURIER_PASSWORD`). Its `Debug` does
/// not show the token.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// The gateway's gRPC address.
    #[arg(
        long,
        global = true,
        env = "COURIER_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub(crate) server: String,
    /// A JWT to present as `authorization: Bearer` on every call. Prefer setting COURIER_TOKEN:
    /// a flag's value shows in `ps` to every user of the host.
    #[arg(
        long,
        global = true,
        env = "COURIER_TOKEN",
        hide_env_values = true,
        conflicts_with = "user"
    )]
    pub(crate) token: Option<String>,
    /// A user of the gateway's users file, sent as `authorization: Basic` on every call; the
    /// password is read from COURIER_PASSWORD (never a flag: flags show in `ps`).
    #[arg(long, global = true)]
    pub(crate) user: Option<String>,
}

impl std::fmt::Debug for ServerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerArgs")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("user", &self.user)
            .finish()
    }
}

/// `courier produce` arguments.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// Topic to write to.
    pub(crate) topic: String,
    /// Values to write; without any, every line of stdin is one record.
    pub(crate) values: Vec<String>,
    /// Key of every record.
    #[arg(long, short)]
    pub(crate) key: Option<String>,
    /// Partition of every record (default: by key, or spread).
    #[arg(long, short)]
    pub(crate) partition: Option<i32>,
    /// Header `name=value`; repeatable.
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    pub(crate) headers: Vec<(String, String)>,
    /// Records per request when reading stdin.
    #[arg(long, default_value_t = 100)]
    pub(crate) batch: usize,
    /// Print nothing per record, only the total.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

/// `courier consume` arguments.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// Topics to read.
    #[arg(required_unless_present = "pattern")]
    pub(crate) topics: Vec<String>,
    /// Read every topic matching this regular expression instead.
    #[arg(long, conflicts_with = "topics")]
    pub(crate) pattern: Option<String>,
    /// Consumer group (default: a plain reader that commits nothing).
    #[arg(long, short)]
    pub(crate) group: Option<String>,
    /// Where to start without a committed offset: earliest, latest, an offset, or @<ms since epoch>.
    #[arg(long, default_value = "earliest")]
    pub(crate) from: String,
    /// Stop after this many records.
    #[arg(long, short = 'n')]
    pub(crate) count: Option<u64>,
    /// Stop when no record arrived for this long (e.g. 5s).
    #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
    pub(crate) idle_timeout: Option<Duration>,
    /// Output: `value` (one value per line) or `json` (one record per line).
    #[arg(long, default_value = "value", value_parser = ["value", "json"])]
    pub(crate) format: String,
    /// Most unacknowledged records.
    #[arg(long, default_value_t = 1000)]
    pub(crate) max_in_flight: u32,
}

/// `courier topics` subcommands.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// List topics.
    List,
    /// Create a topic.
    Create {
        name: String,
        /// Partition count (default: the gateway's topics.default_partitions).
        #[arg(long, short, default_value_t = 0)]
        partitions: u32,
        /// Retention by age, e.g. 7d; 0s keeps forever.
        #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
        retention: Option<Duration>,
    },
    /// Show a topic's partitions and watermarks.
    Describe { name: String },
    /// Delete a topic and its records.
    Delete { name: String },
}

/// `courier groups` subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List consumer groups.
    List,
    /// Show a group's members, committed offsets and lag.
    Describe { group: String },
}

/// `courier regions` subcommands.
#[derive(Debug, Subcommand)]
pub enum RegionsCommand {
    /// Show each region's health, where traffic goes and the last switch (the default).
    List,
    /// Pin writes and reads to a region, whatever the health checks say.
    Switch {
        region: String,
        /// Hold this gateway's writes until the region has copied what it acknowledged in the
        /// region writes leave, then switch (no loss window; clients wait meanwhile).
        #[arg(long)]
        planned: bool,
        /// With `--planned`: how long to wait for the copies before switching anyway.
        #[arg(long, default_value = "30s", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Hand routing back to the health checks (traffic fails back to the preferred region).
    Auto,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("header {text:?} must be name=value"))
}

#[cfg(test)]
mod tests {
    use clap::{Args as _, Command};

    use super::*;

    #[test]
    fn the_token_is_kept_out_of_debug_output_and_its_flag_points_to_the_environment() {
        let args = ServerArgs {
            server: "http://127.0.0.1:50051".into(),
            token: Some("eyJhbGciOi.secret.sig".into()),
            user: None,
        };
        let shown = format!("{args:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");

        let mut command = ServerArgs::augment_args(Command::new("courier"));
        let help = command.render_long_help().to_string();
        assert!(help.contains("Prefer setting COURIER_TOKEN"), "{help}");
        assert!(help.contains("`ps`"), "{help}");
    }
}
