//! vhost-netmem: command line entry point (parse, set up logging, run, exit code).

use std::process::ExitCode;

use clap::Parser;
use vhost_netmem::config::{Cli, NetConfig};
use vhost_netmem::daemon;

fn report(e: &dyn std::error::Error) -> ExitCode {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        src = s.source();
    }
    eprintln!("vhost-netmem: error: {msg}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let config = match NetConfig::from_cli(cli) {
        Ok(c) => c,
        Err(e) => return report(&e),
    };
    match daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}
