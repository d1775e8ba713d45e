//! `courier passwd NAME [--role ROLE]...`: prints a users-file line (`[auth] users_file`), for every
//! protocol's password logins (MQTT CONNECT, AMQP SASL PLAIN, gRPC and HTTP Basic).

use std::io::BufRead;

use anyhow::{Context, Result, bail};

/// Reads the password from the first line of stdin, so it stays out of shell history and `ps`.
pub(crate) fn print_line(name: &str, roles: &[String]) -> Result<()> {
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .context("reading the password from stdin")?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("no password on stdin (echo 'secret' | courier passwd {name})");
    }
    let line = courier_gateway::auth::users_file_line(name, password, roles)
        .map_err(anyhow::Error::msg)?;
    println!("{line}");
    Ok(())
}
