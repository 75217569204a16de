//! anamnesis: a unified customer profile service.
//!
//! Channels (IVR, chatbots, web, stores) post identity signals; the service
//! resolves them to one customer and serves that one profile, and a context
//! card built for a single round trip, back to every channel.
//!
//! # Layout
//!
//! - [`config`]: typed, validated settings loaded in layers (defaults, file, environment).
//! - [`telemetry`]: the `tracing` subscriber, and the audit log's JSON lines.
//! - [`startup`]: `Application::build`: store, services, listener, routes, middleware.
//! - [`conn`]: deadlines on every request of a connection (slow clients).
//! - [`middleware`]: request ids, request spans, HTTP metrics.
//! - [`error`]: the one error-code table and the one `ResponseError`.
//! - [`openapi`]: the OpenAPI document generated from the handlers.
//! - [`auth`]: keys by `kid` (configuration, JWKS), JWT verification and its cache,
//!   scopes, per-subject rate limits, the typed `Authorized<Policy>` extractor.
//! - [`audit`]: one audit line per destructive or administrative action.
//! - [`routes`]: one module per resource; thin handlers.
//! - [`service`]: use cases (ingest, read, write, merge, erase; episodes, follow-ups,
//!   personalisation, export, the identifier upgrade), the group-commit writer, the change
//!   journal, response views.
//! - [`domain`]: identifiers, normalisers, signals, profiles, reconciliation and resolution
//!   rules, the trust table (who verifies which identifier), journey rules, segments and
//!   offers; pure.
//! - [`store`]: the durable store behind a trait, and its sled implementation.
//! - [`cache`]: Redis, when configured: the hot-profile cache and the event bus between instances.
//! - [`events`]: live event streams in process: subscriptions and bounded fan-out.
//! - [`cli`]: the command line, a module per command or family; only `serve` and `openapi`
//!   reach the HTTP layer, the data commands (import, export, backup, store administration)
//!   call the service and the store.

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
