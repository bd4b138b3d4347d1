//! The `warren` binary: parse the command line, load settings, start telemetry, dispatch.

use clap::Parser;

// mimalloc instead of glibc malloc: under load the HTTP front and lapin allocate small buffers
// on every thread, and glibc's arenas spent a fifth of the publish path's CPU (perf, see
// BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = warren::cli::Cli::parse();
    let settings = match warren::config::Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warren: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    warren::telemetry::init(&settings.log);
    match warren::cli::run(cli, settings).await {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "warren failed.");
            eprintln!("warren: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
