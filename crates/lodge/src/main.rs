//! The `lodge` binary: parses the command line and runs one command. Each command lives in its
//! own module under `cmd/`; this file only wires global options, logging and exit codes.

mod cli;
mod cmd;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cmd::init_logging(&cli.global);
    // The agent confines itself before any thread exists, so it builds its own runtime.
    if let cli::Command::Agent(a) = cli.command {
        return lodge_agent::main(lodge_agent::AgentConfig {
            workspace: a.workspace,
            tmp: a.tmp,
            confine: !a.no_confine,
            network: a.network,
            read_only: a.read_only,
        });
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
