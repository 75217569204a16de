use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use anamnesis::auth::{default_secret, Authenticator, Scope};
use anamnesis::config::Settings;
use anamnesis::startup::Application;

/// anamnesis: one memory of the customer across every channel.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file layered over the built-in defaults (also ANAMNESIS_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Print the OpenAPI document.
    Openapi,
    /// Mint a bearer token from the configured (or generated) secret.
    Token {
        /// Scopes, space- or comma-separated: profiles:read pii:read signals:write
        /// profiles:write profiles:erase changes:read admin.
        #[arg(long, default_value = "admin")]
        scope: String,
        /// Bind the token to one channel.
        #[arg(long)]
        channel: Option<String>,
        /// The token's subject.
        #[arg(long, default_value = "cli")]
        subject: String,
        /// Lifetime, e.g. 1h, 30days.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
        /// Sign with the configured key of this `kid` (its secret or its
        /// private_key_file) instead of the default secret.
        #[arg(long)]
        kid: Option<String>,
    },
    /// Exit 0 when the service at the configured address answers /healthz
    /// (for container health checks: no curl needed).
    Healthcheck {
        /// Address to probe; defaults to server.listen.
        #[arg(long)]
        addr: Option<String>,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the cause chain on one line; no backtrace noise.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings),
        Command::Openapi => {
            print!("{}", anamnesis::openapi::document(&settings));
            Ok(())
        }
        Command::Token {
            scope,
            channel,
            subject,
            ttl,
            kid,
        } => {
            let scopes = scope
                .split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(|s| Scope::parse(s).with_context(|| format!("unknown scope `{s}`")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (secret, _) = default_secret(&settings.auth, &settings.storage.path)?;
            let mut auth = Authenticator::new(&settings.auth, secret.as_deref())?;
            if let Some(kid) = &kid {
                auth = auth.sign_with(kid)?;
            }
            println!(
                "{}",
                auth.mint(&subject, &scopes, channel.as_deref(), ttl.into())?
            );
            Ok(())
        }
        Command::Healthcheck { addr } => {
            healthcheck(addr.as_deref().unwrap_or(&settings.server.listen))
        }
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    anamnesis::telemetry::init(&settings.telemetry).with_context(|| {
        format!(
            "opening the audit log {}",
            settings
                .telemetry
                .audit_file
                .as_deref()
                .unwrap_or(std::path::Path::new("-"))
                .display()
        )
    })?;
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings)?;
        if let Some(banner) = app.banner() {
            println!("{banner}");
        }
        app.run_until_stopped().await
    })
}

fn healthcheck(addr: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let addr = addr.replace("0.0.0.0", "127.0.0.1");
    let mut stream =
        std::net::TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if response.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        anyhow::bail!(
            "unhealthy: {}",
            response.lines().next().unwrap_or("no answer")
        )
    }
}
