//! The `trainq` binary: parse the command line, set up tracing, run a subcommand.

use clap::Parser;
use trainq::config::{Cli, Command, WeightsCommand};

fn main() -> anyhow::Result<()> {
    // Before any thread exists: the config file becomes `TRAINQ_*` variables (see config.rs).
    trainq::config::load_config_file(std::env::args_os())?;
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(config) => trainq::server::serve(config).await,
        Command::DemoData(args) => {
            let dir = args.dir.clone();
            let summary = trainq::demo_data::write(&dir, &args.into())?;
            println!("{summary}");
            Ok(())
        }
        Command::User(args) => trainq::server::user_command(args).await,
        Command::Weights(args) => match args.command {
            WeightsCommand::Fetch(args) => Ok(trainq::fetch_weights::fetch(args).await?),
        },
    }
}
