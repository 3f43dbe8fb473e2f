//! `ringcast-bench`: soak, fan-out and echo load against any WebSocket
//! server, a reconnect storm with ringcast.v1 recovery, a chat in a raw
//! room, and a side-by-side
//! comparison of ringcast with peer servers.

mod chat;
mod compare;
mod echo;
mod fanout;
mod load;
mod plot;
mod probe;
mod recover;
mod report;
mod session;
mod soak;
mod target;

use clap::{Parser, Subcommand};
use session::Outcome;
use std::process::ExitCode;

/// Load generator for WebSocket servers, on io_uring.
///
/// Every subcommand exits 0 when all went well, 1 when a connection failed
/// or dropped or a message was lost (the run still reports in full), and 2
/// on a usage or setup error.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Open N connections at a ramp rate, hold them, and report what held
    /// and the memory it cost.
    Soak(soak::Soak),
    /// Publish M messages to N subscribers and report delivery latency and
    /// loss.
    Fanout(fanout::Fanout),
    /// Closed-loop echo over C connections: messages/s and round trip.
    Echo(echo::Echo),
    /// Reconnect storm with recovery: N ringcast.v1 clients each resume a
    /// topic R messages back; time from connect to recovered.
    Recover(recover::Recover),
    /// N clients in a raw room, each sending at a rate: deliveries/s and
    /// latency (server: `ringcast serve --room 'room.*'`).
    Chat(chat::Chat),
    /// Start ringcast and each peer server in turn and run the same soak,
    /// fanout and echo against each.
    Compare(compare::Compare),
}

/// Prints a result's summary; returns whether all went well.
fn summarise(result: impl Outcome) -> bool {
    result.print();
    result.ok()
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Soak(args) => soak::run(&args).map(summarise),
        Command::Fanout(args) => fanout::run(&args).map(summarise),
        Command::Echo(args) => echo::run(&args).map(summarise),
        Command::Recover(args) => recover::run(&args).map(summarise),
        Command::Chat(args) => chat::run(&args).map(summarise),
        Command::Compare(args) => compare::run(&args),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("ringcast-bench: connections failed or dropped, or messages were lost");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("ringcast-bench: {e}");
            ExitCode::from(2)
        }
    }
}
