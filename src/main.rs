//! The `courier` binary: parse the command line, set up tracing, and run the command. The gateway's
//! behaviour lives in the library crates; this file only wires them.

mod cli;
mod config;
mod http;
mod passwd;
mod serve;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;
use courier_tools::{bench, client};

use crate::cli::{Cli, Command, ConfigCommand};

/// jemalloc rather than glibc's malloc: the publish paths allocate a record, its headers and its
/// futures per message across threads, where glibc spent about a tenth of the gateway's CPU time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();

    // Config errors are reported before a runtime (or a listener) exists, and before logging is
    // set up, since the config says how to log.
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
    let log_format = match (&cli.command, &serve_config) {
        (Command::Serve(args), Some(config)) => {
            args.log_format.unwrap_or(config.telemetry.log_format)
        }
        _ => config::LogFormat::Text,
    };
    telemetry::init_logging(log_format);

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
            Command::Config {
                command: ConfigCommand::Check(args),
            } => config::check::run(args).await,
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
