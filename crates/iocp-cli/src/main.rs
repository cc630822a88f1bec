//! `iocp`: the command line of the `iocp` completion-port library.
//!
//! - `iocp probe [--json]`: which backend `BackendChoice::Auto` would pick and why, the kernel
//!   release, and what io_uring offers.
//! - `iocp demo [--backend auto|uring|epoll|all] [--seconds S] [--json]`: post→get throughput
//!   and a TCP echo over loopback (accept with initial receive, recv/send) on each backend.
//!
//! - `iocp bench echo|http|chat|syslog …`: the load generators (see `load`).
//!
//! Exit status: 0 on success, 2 on any error (including bad arguments); `bench` exits 1 when
//! the run had errors (its report is still printed), 2 with only an error when not one
//! connection could be made.

#![forbid(unsafe_code)]

mod demo;
mod json;
mod load;
mod probe;
mod serve;
mod syslog;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Windows IOCP semantics on Linux: io_uring, with an epoll fallback.
#[derive(Debug, Parser)]
#[command(name = "iocp", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show which backend Auto would pick and why, the kernel, and io_uring's capabilities
    Probe {
        /// Print one JSON object line instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Measure post→get throughput and TCP echo round trips on each available backend
    ///
    /// The backend comes from --backend, else the IOCP_BACKEND variable, else all available.
    Demo(demo::DemoArgs),
    /// Run a server on the completion port until SIGINT or SIGTERM
    #[command(subcommand)]
    Serve(serve::ServeCommand),
    /// Load generators: `bench echo` (ping-pong), `bench http` (keep-alive GETs), `bench chat`
    /// (WebSocket clients in rooms) and `bench syslog` (numbered messages, then a count of the files)
    Bench {
        #[command(subcommand)]
        load: load::BenchCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Probe { json } => probe::run(*json),
        Command::Demo(args) => demo::run(args),
        Command::Serve(cmd) => serve::run(cmd),
        Command::Bench { load } => return load::cli(load),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iocp: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
