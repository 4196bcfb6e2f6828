//! The `trainq` binary: parse the command line, set up tracing, run a subcommand.

use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;
use trainq::config::{Cli, Command, WeightsCommand};

fn main() -> anyhow::Result<ExitCode> {
    // Before any thread exists: the config file becomes `TRAINQ_*` variables (see config.rs).
    trainq::config::load_config_file(std::env::args_os())?;
    let command = Cli::parse().command;
    if let Command::Relay(args) = command {
        // Also before any thread exists: the job's secret leaves the environment, so the worker
        // and anything else started later cannot read it.
        let secret = trainq::relay::take_secret()?;
        init_tracing();
        let runtime = tokio::runtime::Runtime::new()?;
        let code = runtime.block_on(trainq::relay::relay(&args, secret))?;
        // A process the worker left behind may still hold its output open: do not wait for it.
        runtime.shutdown_timeout(Duration::from_secs(1));
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
    }
    tokio::runtime::Runtime::new()?.block_on(run(command))?;
    Ok(ExitCode::SUCCESS)
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

async fn run(command: Command) -> anyhow::Result<()> {
    init_tracing();
    match command {
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
        Command::Relay(_) => unreachable!("main runs the relay"),
        Command::Login(args) => trainq::client::login(&args.url, args.token_stdin, args.ca_file.as_deref()).await,
        Command::Ls(args) => trainq::client::ls(args.all, args.state.as_deref(), args.limit, args.json).await,
        Command::Show(args) => trainq::client::show(&args.id).await,
        Command::Logs(args) => trainq::client::logs(&args.id, args.follow).await,
        Command::Cancel(args) => trainq::client::cancel(&args.ids).await,
        Command::Compare(args) => trainq::client::compare(&args.ids, args.csv, args.json).await,
        Command::Pull(args) => trainq::client::pull(&args.ids, &args.to).await,
        Command::Report(args) => trainq::client::report(&args.ids).await,
        Command::Rm(args) => trainq::client::rm(&args.ids).await,
        Command::Admin(args) => trainq::client::admin(args.command).await,
        Command::Token(args) => match args.command {
            trainq::config::TokenCommand::Rotate => trainq::client::rotate_own_token().await,
        },
        Command::Me => trainq::client::me().await,
        Command::Notify(args) => {
            let change = trainq::client::NotifyChange {
                email: args.email,
                webhook: args.webhook,
                secret: args.webhook_secret,
                off: args.off,
            };
            trainq::client::notify(&change).await
        }
        Command::Completions(args) => {
            let mut command = <trainq::config::Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut command, "trainq", &mut std::io::stdout());
            Ok(())
        }
        // These exit with a code that says how the jobs ended.
        Command::Wait(args) => exit(trainq::client::wait(&args.ids, std::time::Duration::from_secs(1)).await?),
        Command::Watch(args) => exit(trainq::client::watch(&args.ids).await?),
        Command::Submit(args) => {
            let mut options = submit_options(args.edits, args.sweeps, args.repeats, args.name);
            (options.after, options.init_from) = (args.after, args.init_from);
            exit(trainq::client::submit(&args.spec, &options).await?)
        }
        Command::Redo(args) => exit(
            trainq::client::redo(&args.id, args.resume, &submit_options(args.edits, Vec::new(), None, None)).await?,
        ),
    }
}

fn submit_options(
    edits: trainq::config::EditArgs,
    sweeps: Vec<String>,
    repeats: Option<u32>,
    name: Option<String>,
) -> trainq::client::SubmitOptions {
    trainq::client::SubmitOptions {
        sets: edits.sets,
        sweeps,
        repeats,
        name,
        follow: edits.follow,
        json: edits.json,
        ..Default::default()
    }
}

/// Ends the process with `code` (0 = all went well), as `wait` and `watch` promise.
fn exit(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}
