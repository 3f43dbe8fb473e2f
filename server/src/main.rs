//! `ringcast`: the WebSocket push server binary.

mod api;
mod broker;
mod cli;
mod doctor;
mod hooks;
mod metrics;
mod probe;
mod statics;
mod upstream;
mod webhooks;

use cli::{CliError, Command, ConfigCommand, LogFormat, Serve};
use ringcast_engine::auth::Auth;
use ringcast_engine::Config;
use ringcast_engine::Runtime;
use std::process::ExitCode;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = match cli::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(CliError::Clap(e)) => e.exit(),
        Err(CliError::Config(message)) => {
            eprintln!("ringcast: {message}");
            return ExitCode::from(2);
        }
    };
    let (serve, print) = match cli.command {
        Some(Command::Serve(serve)) => (serve, false),
        Some(Command::Config(ConfigCommand::Print(serve))) => (serve, true),
        Some(Command::Doctor(doctor)) => return doctor::run(&doctor),
        None => (Serve::default(), false),
    };
    if let Err(message) = serve.validate() {
        eprintln!("ringcast: {message}");
        return ExitCode::from(2);
    }
    if print {
        print!("{}", serve.to_toml());
        return ExitCode::SUCCESS;
    }
    let (config, api_token, broker_access) = match serve
        .engine_config()
        .and_then(|c| Ok((c, serve.api_token()?, serve.broker_access()?)))
    {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("ringcast: {message}");
            return ExitCode::from(2);
        }
    };
    init_logging(serve.log_format);
    abort_on_panic();
    match run(serve, config, api_token, broker_access) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcast: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opts the process out of transparent huge pages (`PR_SET_THP_DISABLE`).
/// The allocator asks for them on its arenas (`MADV_HUGEPAGE`), and on a
/// host with THP in `madvise` or `always` mode every touched 2 MiB region
/// then counts whole in RSS. For a server whose memory is many small
/// records spread over time, that measured 670–890 B of RSS per idle
/// connection instead of under 200 B (15,000 connections, 2 workers). A
/// failure (a kernel without the option) only costs that memory.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and touches no
    // memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "ringcast: PR_SET_THP_DISABLE failed ({}); memory per connection may be higher",
            std::io::Error::last_os_error()
        );
    }
}

/// Makes any panic, on any thread, end the process. A worker that died
/// while the others run would leave `/healthz` at 200 while its share of
/// the connections gets nothing; aborting gives systemd or the orchestrator
/// a failed exit (SIGABRT) to restart on, after the usual panic message.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        tracing::error!(thread = name, "a thread panicked; aborting the process");
        eprintln!(
            "ringcast: thread {name} panicked; aborting so that the supervisor restarts ringcast"
        );
        std::process::abort();
    }));
}

/// Logs to stderr, in colour only when stderr is a terminal and
/// `NO_COLOR` is unset or empty (<https://no-color.org>): a log redirected
/// to a file or a journal carries no escape codes.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Logs, once at startup, whether connections and the API need tokens.
fn log_access(serve: &Serve, auth: Option<&Auth>, api_token: bool) {
    match auth {
        None => tracing::info!(
            "auth is off (no --jwt-* flag): every connection is anonymous and may subscribe to any topic"
        ),
        Some(auth) => tracing::info!(
            keys = %auth.describe(),
            allow_anonymous = auth.allow_anonymous(),
            "auth is on: connections need a valid token"
        ),
    }
    if !api_token && !serve.api_listen.ip().is_loopback() {
        tracing::warn!(
            api = %serve.api_listen,
            "the API listens beyond loopback without --api-token-file: anyone who reaches it can publish, disconnect, drain and rebalance"
        );
    }
}

/// Reloads the JWT keys on every SIGHUP (a bad file keeps the old keys).
fn reload_on_hangup(auth: Option<Arc<Auth>>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match &auth {
                None => tracing::info!("SIGHUP: auth is off, no keys to reload"),
                Some(auth) => match auth.reload() {
                    Ok(keys) => tracing::info!(keys, "SIGHUP: JWT keys reloaded"),
                    Err(why) => tracing::warn!(
                        "SIGHUP: JWT keys not reloaded, the previous keys stay: {why}"
                    ),
                },
            }
        }
    });
    Ok(())
}

fn run(
    serve: Serve,
    mut config: Config,
    api_token: Option<String>,
    broker_access: broker::Access,
) -> std::io::Result<()> {
    if serve.listen_overlap {
        tracing::info!(listen = %serve.listen, "--listen-overlap: sharing the address with any server already there");
    } else if let Some(who) = probe::who_listens(serve.listen) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "another server is already listening on {} ({who}); stop it, choose another --listen, \
                 or pass --listen-overlap to share the address on purpose (a zero-downtime upgrade)",
                serve.listen
            ),
        ));
    }
    log_access(&serve, config.auth.as_deref(), api_token.is_some());
    let hooks = match &serve.hook_url {
        Some(url) => {
            let max_answer = serve.max_message_size + 64 * 1024;
            let client =
                hooks::Hooks::new(url, serve.hook_timeout, serve.hook_concurrency, max_answer)
                    .map_err(std::io::Error::other)?;
            Some(Arc::new(client))
        }
        None => None,
    };
    let hooks_on = config.hooks;
    let auth = config.auth.clone();
    let (webhooks, webhook_senders) =
        webhooks::Webhooks::new(hooks.clone(), hooks_on.presence, hooks_on.channels);
    let plan = broker::Plan::new(
        &serve.brokers,
        broker_access,
        serve.bounds.broker(serve.max_message_size, &serve.presence),
        serve.bounds.interest(),
        webhooks.clone(),
    )
    .map_err(std::io::Error::other)?;
    config.broker = plan.positions_from_outside();
    let (sink, events, bounds) = upstream::channel(
        serve.bounds.upstream(serve.max_message_size),
        plan.demand(),
        webhooks,
        hooks_on.disconnect,
    );
    config.upstream = Some(sink);
    // Work may wait for a connection (at a hook or the broker): the
    // workers report every removal, so that it is dropped, not done.
    config.hooks.disconnect = true;
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
    let ws_addr = runtime.local_addr();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio.block_on(async move {
        reload_on_hangup(auth)?;
        let broker = plan
            .start(handle.clone())
            .await
            .map_err(std::io::Error::other)?;
        let upstream_context = upstream::Context {
            handle: handle.clone(),
            hooks: hooks.clone(),
            on: hooks_on,
            max_message: serve.max_message_size,
            forward_token: serve.bounds.hook_forward_token,
            broker: broker.clone(),
            bounds: bounds.clone(),
        };
        tokio::spawn(upstream::run(events, upstream_context));
        webhook_senders.spawn(hooks.clone());
        let listener = tokio::net::TcpListener::bind(serve.api_listen).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", serve.api_listen))
        })?;
        let api_addr = listener.local_addr()?;
        tracing::info!(ws = %ws_addr, api = %api_addr, path = %serve.path, "ringcast listening");
        if serve.demo {
            tracing::info!("demo page: {}", demo_url(ws_addr));
        }
        // One stable line on stdout for scripts and tests.
        println!("listening ws={ws_addr} api={api_addr}");
        let departing = broker.clone();
        let state = Arc::new(api::State::new(
            handle.clone(),
            &serve,
            api_token,
            hooks,
            broker,
            bounds,
        ));
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let app = api::router(state.clone(), serve.max_message_size);
        let api = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = api_stopped.await;
                })
                .await
        });
        let mut signals = Signals::new()?;
        tokio::select! {
            () = signals.next() => {}
            () = state.drain_requested() => {}
        }
        state.begin_drain(None);
        // The workers exit once their connections are gone or the drain
        // period ends; a second signal closes the rest at once.
        let mut stopped = tokio::task::spawn_blocking(move || runtime.wait());
        let result = loop {
            tokio::select! {
                joined = &mut stopped => break joined.unwrap_or_else(|e| Err(std::io::Error::other(e))),
                () = signals.next() => {
                    tracing::info!("second signal: closing every connection now");
                    handle.shutdown();
                }
            }
        };
        // Presence members this node still has in the broker (their
        // leaves may still be queued) are removed at once.
        let _ = tokio::time::timeout(serve.bounds.broker_timeout * 4, departing.depart()).await;
        let _ = stop_api.send(());
        let served = api.await.map_err(std::io::Error::other)?;
        tracing::info!("drained; exiting");
        result.and(served)
    })
}

/// The demo page's URL for a browser on this host: the listen address,
/// with an unspecified IP (`0.0.0.0`, `::`) as loopback.
fn demo_url(ws: std::net::SocketAddr) -> String {
    let ip = match ws.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    format!("http://{}/", std::net::SocketAddr::new(ip, ws.port()))
}

/// SIGTERM and SIGINT, as one stream.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
