//! The `courier` binary: parse the command line, set up tracing, and run the command. The gateway's
//! behaviour lives in the library crates; this file only wires them.

mod cli;
mod config;
mod http;
mod passwd;
mod serve;

use std::process::ExitCode;

use clap::Parser;
use courier_tools::{bench, client};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

/// jemalloc rather than glibc's malloc: the publish paths allocate a record, its headers and its
/// futures per message across threads, where glibc spent about a tenth of the gateway's CPU time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    // Config errors are reported before a runtime (or a listener) exists.
    let serve_config = match &cli.command {
        Command::Serve(args) => {
            let overrides = config::Overrides {
                grpc_listen: args.grpc_listen,
                mqtt_listen: args.mqtt_listen,
                amqp_listen: args.amqp_listen,
                http_listen: args.http_listen,
                data_dir: args.data_dir.clone(),
            };
            match config::Config::load(args.config.as_deref(), &overrides) {
                Ok(config) => Some(config),
                Err(error) => {
                    eprintln!("courier: invalid configuration: {error}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("courier: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        if let Some(config) = serve_config {
            return serve::run(config).await;
        }
        match cli.command {
            Command::Serve(_) => Ok(()),
            Command::Produce(args) => client::produce(args).await,
            Command::Consume(args) => client::consume(args).await,
            Command::Topics { server, command } => client::topics(server, command).await,
            Command::Groups { server, command } => client::groups(server, command).await,
            Command::Regions { server, command } => client::regions(server, command).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Passwd { name, roles } => passwd::print_line(&name, &roles),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("courier: {error:#}");
            ExitCode::FAILURE
        }
    }
}
