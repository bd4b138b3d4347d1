//! `warren-bench`: warren's benchmark harness, a binary of its own beside `warren`.
//!
//! It uses the `warren` library through its public API only (settings, the broker and its
//! topology, the publisher, the store, `App` and its roles, the `Consumer` trait), so the
//! production library carries no benchmark code. The subcommands:
//!
//! - [`jobs`], [`sagas`], [`scale`]: warren's throughput, each in a scratch vhost; `sagas`
//!   with the Rust participants or with HTTP ones ([`http_participants`]);
//! - [`baseline`]: the ceilings warren is measured against (a bare warp+lapin publish server,
//!   a raw lapin publisher and consumer) and exact queue depths;
//! - [`header_cost`]: what warren's envelope and its CloudEvents headers cost the broker;
//! - [`retry_delay`]: how close broker-side retries come back to the configured delay;
//! - [`subscriptions`]: HTTP subscriptions' deliveries per second and latency to a local
//!   receiver, against a bare lapin+reqwest relay (the ceiling);
//! - [`smtp_sink`]: an SMTP receiver for the sync-mode benchmark and for `scripts/run-local.sh`
//!   (it can write each mail as an `.eml` file and print a line per mail).
//!
//! `scripts/bench-suite.sh` runs them all; [`common`] holds what they share, [`cpu`] reads
//! CPU times from `/proc`.

mod baseline;
mod common;
mod cpu;
mod header_cost;
mod http_participants;
mod jobs;
mod retry_delay;
mod sagas;
mod scale;
mod smtp_sink;
mod subscriptions;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

// The same allocator as the `warren` binary, so the ceilings (bare server, raw lapin) and
// warren's own figures are measured under the same malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// warren's benchmarks, against the configured broker and database (each in a scratch vhost).
///
/// Settings load as for `warren`: built-in defaults, then --config (TOML), then WARREN_*
/// environment variables (WARREN_AMQP__URL, WARREN_DATABASE__URL, ...).
#[derive(Debug, Parser)]
#[command(name = "warren-bench", version, about, long_about)]
struct Cli {
    /// TOML settings file (also WARREN_CONFIG).
    #[arg(long, global = true, env = "WARREN_CONFIG")]
    config: Option<PathBuf>,
    /// Which benchmark.
    #[command(subcommand)]
    command: BenchCommand,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Job throughput: publish, drain, and publish -> consume -> handle -> ack at once, with
    /// the inbox and one database write per job.
    Jobs(jobs::JobsBench),
    /// Sagas end to end: started over HTTP, every role in process, until each saga
    /// completed; sagas per second, saga duration percentiles and warren's CPU per saga. With
    /// the built-in Rust participants (order sagas) or, `--participants http`, with HTTP
    /// subscriptions to in-process HTTP participants (a file-defined saga of the same shape).
    Sagas(sagas::SagasBench),
    /// Scale-out: N messages parked in `warren.notifications`, then drained by 1, then by 2
    /// `warren worker` processes (children of this one); messages per second for each.
    Scale(scale::ScaleBench),
    /// The ceiling: a raw lapin publisher, a raw lapin consumer draining what it published,
    /// and both at once, on one queue of a scratch vhost.
    Raw(baseline::RawBench),
    /// The ceiling of the HTTP front: a bare warp+lapin server publishing each request's body
    /// with a confirm (`POST /publish/{routing_key}`), to the configured broker, until killed.
    BareServer(baseline::BareServer),
    /// Broker-side retry delay accuracy: N jobs failing once with a short delay.
    RetryDelay(retry_delay::RetryDelayBench),
    /// HTTP subscriptions: deliveries per second to a local receiver answering 204, at each
    /// concurrency, against a bare lapin consumer POSTing with reqwest (the ceiling), and the
    /// delivery latency (publish to receiver) at a steady rate.
    Subscriptions(subscriptions::SubscriptionsBench),
    /// An SMTP receiver that accepts and counts every mail (the sync-mode benchmark; the mail
    /// server of `scripts/run-local.sh`, with --maildir and --summary).
    SmtpSink(smtp_sink::SmtpSink),
    /// Exact message counts of queues (passive declare), one `name count` line each.
    Depth(baseline::Depth),
    /// What warren's message format costs RabbitMQ per message (its own CPU time): the data
    /// alone, warren's envelope, and the envelope with the CloudEvents `ce-*` headers.
    HeaderCost(header_cost::HeaderCost),
}

/// Runs one benchmark with loaded settings.
async fn run(command: BenchCommand, settings: warren::Settings) -> anyhow::Result<()> {
    match command {
        BenchCommand::Jobs(opts) => jobs::jobs(settings, opts).await,
        BenchCommand::Sagas(opts) => sagas::sagas(settings, opts).await,
        BenchCommand::Scale(opts) => scale::scale(settings, opts).await,
        BenchCommand::Raw(opts) => baseline::raw(settings, opts).await,
        BenchCommand::BareServer(opts) => {
            baseline::bare_server(settings.amqp.url.expose(), opts).await
        }
        BenchCommand::RetryDelay(opts) => retry_delay::retry_delay(settings, opts).await,
        BenchCommand::Depth(opts) => baseline::depth(settings.amqp.url.expose(), opts).await,
        BenchCommand::HeaderCost(opts) => header_cost::header_cost(settings, opts).await,
        BenchCommand::SmtpSink(opts) => smtp_sink::smtp_sink(opts).await,
        BenchCommand::Subscriptions(opts) => subscriptions::subscriptions(settings, opts).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    warren::tls::install_crypto_provider();
    let cli = Cli::parse();
    let settings = match warren::Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warren-bench: {e}");
            return ExitCode::from(2);
        }
    };
    warren::telemetry::init(&settings.log);
    match run(cli.command, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_sink_takes_a_maildir() {
        let cli = Cli::try_parse_from([
            "warren-bench",
            "smtp-sink",
            "--addr",
            "127.0.0.1:0",
            "--maildir",
            "target/local-mail",
            "--summary",
        ])
        .expect("parses");
        let BenchCommand::SmtpSink(opts) = cli.command else {
            panic!("not the sink: {cli:?}");
        };
        assert_eq!(opts.maildir, Some(PathBuf::from("target/local-mail")));
        assert!(opts.summary);
    }
}
