//! The reference the load script compares anamnesis with: a bare actix-web
//! server that answers every request, whatever its method and path, with the
//! same bytes from memory (reading a request body first, if there is one). No
//! auth, no store, no JSON work: what this machine can do for HTTP alone.
//!
//! `cargo run --release --bin reference -- ADDR BODY_FILE [WORKERS]`
//! (WORKERS 0 or absent: one per core, as anamnesis's default). Prints the
//! bound address on stdout once it listens (ADDR may use port 0).

use std::net::TcpListener;

use actix_web::http::header::ContentType;
use actix_web::{web, App, HttpResponse, HttpServer};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(file)) = (args.next(), args.next()) else {
        eprintln!("usage: reference ADDR BODY_FILE [WORKERS]");
        std::process::exit(2);
    };
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let body = web::Bytes::from(std::fs::read(&file)?);
    let listener = TcpListener::bind(&addr)?;
    println!("{}", listener.local_addr()?);
    let mut server = HttpServer::new(move || {
        let body = body.clone();
        App::new()
            .app_data(web::PayloadConfig::new(8 << 20))
            .default_service(web::to(move |_: web::Bytes| {
                let body = body.clone();
                async move {
                    HttpResponse::Ok()
                        .content_type(ContentType::json())
                        .body(body)
                }
            }))
    })
    .listen(listener)?;
    if workers > 0 {
        server = server.workers(workers);
    }
    server.run().await
}
