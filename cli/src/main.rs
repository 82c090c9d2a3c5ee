//! `klog`: the operator's walkthrough for any Kafka-compatible broker (ours by default):
//! topics, a console producer and consumer, consumer groups, and file source and sink
//! connectors. It speaks the Kafka protocol through librdkafka.

mod connect;
mod console;
mod groups;
mod topics;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "klog", version, about = "Operate a Kafka-compatible broker")]
struct Cli {
    /// Broker to talk to.
    #[arg(
        long,
        short = 'b',
        global = true,
        default_value = "127.0.0.1:9092",
        alias = "broker-list"
    )]
    bootstrap_server: String,
    /// Print results as JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Send lines from stdin or a file to a topic.
    Produce(console::ProduceArgs),
    /// Print a topic's messages.
    Consume(console::ConsumeArgs),
    /// List and describe consumer groups, and reset their offsets.
    #[command(subcommand)]
    Groups(groups::GroupsCommand),
    /// File source and sink connectors (like Kafka Connect's standalone file connectors).
    #[command(subcommand)]
    Connect(connect::ConnectCommand),
}

/// Context every command gets.
pub struct Ctx {
    pub bootstrap: String,
    pub json: bool,
}

impl Ctx {
    pub fn config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            // Fail fast and say so when the broker is not there.
            .set("socket.connection.setup.timeout.ms", "5000")
            .set("log_level", "3");
        c
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Ctx {
        bootstrap: cli.bootstrap_server,
        json: cli.json,
    };
    let result = match cli.command {
        Command::Topics(c) => topics::run(&ctx, c),
        Command::Produce(a) => console::produce(&ctx, a),
        Command::Consume(a) => console::consume(&ctx, a),
        Command::Groups(c) => groups::run(&ctx, c),
        Command::Connect(c) => connect::run(&ctx, c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("klog: {e:#}");
            ExitCode::FAILURE
        }
    }
}
