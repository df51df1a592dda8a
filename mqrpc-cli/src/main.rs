//! `mqrpc`: list the mqrpc services on a broker, show their info and
//! stats, ping them, or call a method with JSON arguments.
//!
//! ```text
//! mqrpc --broker mqtt://127.0.0.1:1883 list
//! mqrpc info Calculator
//! mqrpc call Calculator add '{"a": 40, "b": 2}'
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use mqrpc::{Client, ClientOptions, Codec, Connection, Status};

#[derive(Parser)]
#[command(
    name = "mqrpc",
    version,
    about = "Call and inspect mqrpc services over MQTT v5"
)]
struct Cli {
    /// Broker URL, mqtt://[user[:password]@]host[:port].
    #[arg(long, env = "MQRPC_BROKER", default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    /// Topic prefix of the services.
    #[arg(long, default_value = "mqrpc")]
    prefix: String,
    /// How long to wait for answers, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    wait_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every service that answers, one line per server instance.
    List,
    /// `_info` of every server of a service, as JSON.
    Info { service: String },
    /// `_stats` of every server of a service, as JSON.
    Stats { service: String },
    /// Whether a server of the service answers.
    Ping {
        service: String,
        /// Ask this instance only.
        #[arg(long)]
        instance: Option<String>,
    },
    /// Calls a method with JSON arguments (an object of the argument
    /// names) and prints the JSON answer.
    Call {
        service: String,
        method: String,
        /// e.g. '{"a": 40, "b": 2}'
        #[arg(default_value = "{}")]
        args: String,
        /// Call this instance only.
        #[arg(long)]
        instance: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, mqrpc::Error> {
    let conn = Connection::connect_url(&cli.broker).await?;
    let wait = Duration::from_millis(cli.wait_ms);
    let options = || {
        ClientOptions::default()
            .prefix(cli.prefix.clone())
            .timeout(wait)
            .codec(Codec::Json)
    };
    let code = match &cli.command {
        Command::List => {
            let found = mqrpc::discover(&conn, &cli.prefix, wait).await?;
            if found.is_empty() {
                eprintln!("no service answered within {wait:?}");
            }
            for info in found {
                let methods: Vec<_> = info.methods.iter().map(|m| m.name.as_str()).collect();
                println!(
                    "{}\t{}\t{}\t{}",
                    info.service,
                    info.instance,
                    info.version,
                    methods.join(",")
                );
            }
            ExitCode::SUCCESS
        }
        Command::Info { service } => {
            let answers: Vec<_> = Client::new(&conn, service, options())
                .await?
                .info()
                .await?
                .collect()
                .await;
            print_answers(answers)
        }
        Command::Stats { service } => {
            let answers: Vec<_> = Client::new(&conn, service, options())
                .await?
                .stats()
                .await?
                .collect()
                .await;
            print_answers(answers)
        }
        Command::Ping { service, instance } => {
            let mut client = Client::new(&conn, service, options()).await?;
            if let Some(instance) = instance {
                client = client.to_instance(instance)?;
            }
            client.ping().await?;
            println!("ok");
            ExitCode::SUCCESS
        }
        Command::Call {
            service,
            method,
            args,
            instance,
        } => {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(args) {
                eprintln!("error: the arguments are not JSON: {e}");
                return Ok(ExitCode::from(2));
            }
            let mut client = Client::new(&conn, service, options()).await?;
            if let Some(instance) = instance {
                client = client.to_instance(instance)?;
            }
            let response = client.call_raw(method, args.clone().into_bytes()).await?;
            let text = String::from_utf8_lossy(&response.payload);
            match response.status {
                Status::Ok => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                // The method's typed error, as JSON.
                Status::Error => {
                    println!("{text}");
                    eprintln!("the method returned an error");
                    ExitCode::from(1)
                }
                other => {
                    eprintln!("error: {other}: {text}");
                    ExitCode::from(2)
                }
            }
        }
    };
    conn.close().await;
    Ok(code)
}

/// One JSON line per answering instance; errors on stderr.
fn print_answers<T: serde::Serialize>(answers: Vec<(String, Result<T, mqrpc::Error>)>) -> ExitCode {
    if answers.is_empty() {
        eprintln!("no server answered");
        return ExitCode::from(1);
    }
    let mut code = ExitCode::SUCCESS;
    for (instance, answer) in answers {
        match answer {
            Ok(value) => println!("{}", serde_json::to_string(&value).unwrap_or_default()),
            Err(e) => {
                eprintln!("error ({instance}): {e}");
                code = ExitCode::from(2);
            }
        }
    }
    code
}
