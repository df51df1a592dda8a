//! `mqrpc`: list the mqrpc services on a broker, show their info and
//! stats, ping them, or call a method with JSON arguments.
//!
//! ```text
//! mqrpc --broker mqtt://127.0.0.1:1883 list
//! MQRPC_BROKER=mqtt://127.0.0.1:1883 mqrpc info Calculator
//! mqrpc call Calculator add '{"a": 40, "b": 2}'
//! ```
//!
//! Like the library's `Connection::from_env`, it has no default broker:
//! `--broker` or `MQRPC_BROKER` names it.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mqrpc::{Client, ClientOptions, Codec, Connection, ServiceInfo, Status, StreamExt};

#[derive(Parser)]
#[command(
    name = "mqrpc",
    version,
    about = "Call and inspect mqrpc services over MQTT v5"
)]
struct Cli {
    /// Broker URL, mqtt://[user[:password]@]host[:port]; no default, as
    /// in the library (e.g. mqtt://127.0.0.1:1883).
    #[arg(long, env = "MQRPC_BROKER")]
    broker: Option<String>,
    /// Topic prefix of the services.
    #[arg(long, default_value = "mqrpc")]
    prefix: String,
    /// How long to wait for answers, in milliseconds: for a call's answer
    /// (and between the items of a stream); `list` waits this long for the
    /// first answer, then until none came for --quiet-ms; `info` and
    /// `stats` wait all of it, for every server.
    #[arg(long, default_value_t = 2000)]
    wait_ms: u64,
    /// `list`: stop once no answer came for this long, in milliseconds.
    #[arg(long, default_value_t = 300)]
    quiet_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every service that answers, one line per server instance
    /// (service, instance, version, methods).
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
    /// names) and prints the JSON answer; for a streaming method, every
    /// item, one JSON value per line.
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
    let Some(broker) = &cli.broker else {
        eprintln!(
            "error: no broker: pass --broker mqtt://host:port or set MQRPC_BROKER \
             (e.g. mqtt://127.0.0.1:1883)"
        );
        return Ok(ExitCode::from(2));
    };
    let conn = Connection::connect_url(broker).await?;
    let wait = Duration::from_millis(cli.wait_ms);
    let options = || {
        ClientOptions::default()
            .prefix(cli.prefix.clone())
            .timeout(wait)
            .codec(Codec::Json)
    };
    let code = match &cli.command {
        Command::List => {
            let quiet = Duration::from_millis(cli.quiet_ms);
            let found = list(&conn, &cli.prefix, wait, quiet).await?;
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
            // Every server, until --wait-ms.
            let answers: Vec<_> = Client::new(&conn, service, options())
                .await?
                .broadcast::<_, ServiceInfo>(mqrpc::protocol::INFO_METHOD, &(), None)
                .await?
                .collect()
                .await;
            print_answers(answers)
        }
        Command::Stats { service } => {
            let answers: Vec<_> = Client::new(&conn, service, options())
                .await?
                .broadcast::<_, mqrpc::ServiceStats>(mqrpc::protocol::STATS_METHOD, &(), None)
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
            let answers = client
                .call_raw_answers(method, args.clone().into_bytes())
                .await?;
            print_call(answers).await
        }
    };
    conn.close().await;
    Ok(code)
}

/// Every server under `prefix` that answers `_info`: waits up to `wait`
/// for the first answer, then until none came for `quiet` (or `wait` in
/// all has passed).
async fn list(
    conn: &Connection,
    prefix: &str,
    wait: Duration,
    quiet: Duration,
) -> Result<Vec<ServiceInfo>, mqrpc::Error> {
    let options = ClientOptions::default()
        .prefix(prefix)
        .timeout(wait)
        .codec(Codec::Json);
    let everyone = Client::new(conn, mqrpc::protocol::ANY_SERVICE, options).await?;
    let mut answers = everyone
        .broadcast::<_, ServiceInfo>(mqrpc::protocol::INFO_METHOD, &(), None)
        .await?;
    let mut found = Vec::new();
    loop {
        let next = if found.is_empty() {
            answers.next().await
        } else {
            match tokio::time::timeout(quiet, answers.next()).await {
                Ok(next) => next,
                Err(_) => break, // quiet: everyone answered
            }
        };
        match next {
            Some((_, Ok(info))) => found.push(info),
            // Nobody listens: nothing to find.
            Some((_, Err(mqrpc::Error::NoResponder { .. }))) | None => break,
            Some((_, Err(e))) => return Err(e),
        }
    }
    found.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
    Ok(found)
}

/// Prints every answer of a call, one JSON value per line: one for a
/// plain method, each item of a stream. Exit code 1 for the method's typed
/// error (printed as JSON), 2 for any other failure.
async fn print_call(mut answers: mqrpc::RawAnswers) -> ExitCode {
    while let Some(answer) = answers.next().await {
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let text = String::from_utf8_lossy(&response.payload);
        match response.status {
            Status::Ok => println!("{text}"),
            Status::Error => {
                println!("{text}");
                eprintln!("the method returned an error");
                return ExitCode::from(1);
            }
            other => {
                eprintln!("error: {other}: {text}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
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
