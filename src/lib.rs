//! anamnesis: a unified customer profile service.
//!
//! Channels (IVR, chatbots, web, stores) post identity signals; the service
//! resolves them to one customer and serves that one profile, and a context
//! card built for a single round trip, back to every channel.
//!
//! # Layout
//!
//! The arrows point one way (`tests/architecture.rs` holds them; the picture
//! is in `docs/architecture.md`): `routes → service → {domain, store, cache,
//! events}`, and the domain imports nothing above it.
//!
//! - [`domain`]: the rules, pure: identifiers and their normalisers, signals and how they are
//!   checked, profiles and how observations reconcile (`ProfileEdit`), resolution, the trust
//!   table, journey rules, segments and offers, change events, positions and cursor texts, the
//!   strict JSON reader, and the shapes of the rule sections of the configuration.
//! - [`config`]: typed settings in layers (defaults, file, environment), a file per section;
//!   `Settings::validate` returns the compiled rules.
//! - [`store`]: the durable store behind a trait, with its embedded (`sled/`) and database
//!   (`postgres/`) engines, the record layout (`records/`), backups and the store's own records.
//! - [`cache`]: Redis, when configured: connections, keys, cached entries, health, commits and
//!   the event bus between instances.
//! - [`events`]: live event streams in process: subscriptions and bounded fan-out.
//! - [`telemetry`]: the `tracing` subscriber, the request a task serves, the audit line.
//! - [`service`]: the use cases (ingest, read, write, merge, erase; episodes, follow-ups,
//!   personalisation, export, backup and verify, the identifier upgrade), the group-commit
//!   writer, the change journal, masking and the response views.
//! - [`auth`]: keys by `kid` (configuration, JWKS), tokens (verify and mint), scopes, per-subject
//!   limits, and the typed `Authorized<Policy>` extractor.
//! - [`routes`]: one module per resource, thin handlers, and the request bodies and query strings
//!   (`routes::inputs`).
//! - [`error`]: the one error-code table (`error::codes`) and the one `ResponseError`.
//! - [`audit`]: the edge's audit helpers (a token's action and how it ended).
//! - [`openapi`]: the OpenAPI document generated from the handlers and the error table.
//! - [`middleware`], [`conn`]: request ids, spans and metrics; deadlines on every request of a
//!   connection.
//! - [`startup`]: `Application::build`: store, services, listener, routes, middleware.
//! - [`cli`]: the command line, a module per command or family; only `serve` and `openapi`
//!   reach the HTTP layer, the data commands call the service and the store.

pub mod audit;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod conn;
pub mod domain;
pub mod error;
pub mod events;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
