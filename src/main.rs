// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vhost-netmem: command line entry point (parse, set up logging, run, exit code).

use std::process::ExitCode;

use vhost_netmem::config::file::{self, Parsed};
use vhost_netmem::config::{Command, NetConfig};
use vhost_netmem::daemon;
use vhost_netmem::launch::activation::ListenEnv;
use vhost_netmem::launch::conventions;

/// `e` and its sources, each once.
fn message(e: &dyn std::error::Error) -> String {
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
    msg
}

fn report(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("vhost-netmem: error: {}", message(e));
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    // QEMU's conventions: --print-capabilities ignores every other option.
    if conventions::wants_capabilities(std::env::args_os()) {
        println!("{}", conventions::capabilities_json());
        return ExitCode::SUCCESS;
    }
    // Still one thread: the environment may be changed.
    let listen_env = ListenEnv::take();
    let (cli, origins) = match file::parse(std::env::args_os().collect()) {
        Parsed::Cli(cli, origins) => (*cli, origins),
        Parsed::Clap(e) => e.exit(),
        Parsed::File(e) => return report(&e),
    };
    if let Some(Command::Ctl(args)) = &cli.command {
        return vhost_netmem::api::ctl::run(args);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .format_timestamp_millis()
        .init();
    let activated = if cli.has_socket_option() {
        if listen_env.fds.is_some() {
            log::info!("socket activation variables ignored: the command line names the socket");
        }
        None
    } else {
        match listen_env.socket(std::process::id()) {
            Ok(a) => a,
            Err(e) => return report(&e),
        }
    };
    let config = match NetConfig::from_cli_with(cli, activated) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vhost-netmem: error: {}", origins.explain(&message(&e)));
            return ExitCode::FAILURE;
        }
    };
    match daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}
