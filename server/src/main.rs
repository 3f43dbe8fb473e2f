//! `ringcast`: the WebSocket push server binary.

mod api;
mod cli;
mod doctor;

use clap::Parser;
use cli::{Cli, Command, Serve};
use ringcast_engine::runtime::Runtime;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let serve = match Cli::parse().command {
        Some(Command::Serve(serve)) => serve,
        Some(Command::Doctor(doctor)) => return doctor::run(&doctor),
        None => Serve::default(),
    };
    if let Err(message) = serve.validate() {
        eprintln!("ringcast: {message}");
        return ExitCode::from(2);
    }
    match run(serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcast: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(serve: Serve) -> std::io::Result<()> {
    let config = serve.engine_config();
    let workers = config.workers;
    let runtime = Runtime::start(config)?;
    let (capacity, nofile) = (runtime.capacity(), runtime.rlimit_nofile());
    let per_worker = capacity / workers as u64;
    tracing::info!(
        workers,
        per_worker,
        capacity,
        rlimit_nofile = nofile,
        "connection capacity: {workers} workers x {per_worker} fixed-file slots = {capacity} connections"
    );
    if let Some(wanted) = serve.max_connections.filter(|&n| n as u64 > capacity) {
        tracing::warn!(
            "--max-connections {wanted} exceeds this host's ceiling of {capacity} \
             (workers x RLIMIT_NOFILE {nofile}); raise the open-file limit (see tuning/) or add workers"
        );
    }
    let handle = runtime.handle();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served = tokio.block_on(async {
        let listener = tokio::net::TcpListener::bind(serve.api_listen).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", serve.api_listen))
        })?;
        let api_addr = listener.local_addr()?;
        tracing::info!(ws = %runtime.local_addr(), api = %api_addr, path = %serve.path, "ringcast listening");
        // One stable line on stdout for scripts and tests.
        println!("listening ws={} api={}", runtime.local_addr(), api_addr);
        let app = api::router(handle.clone(), serve.max_message_size);
        axum::serve(listener, app).with_graceful_shutdown(stop_signal()).await
    });
    handle.shutdown();
    tracing::info!("shutting down: closing connections with 1001");
    let stopped = runtime.wait();
    served.and(stopped)
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
