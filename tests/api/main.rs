mod helpers;

mod auth;
mod bad_input;
mod binary;
mod cache;
mod concurrency;
mod contract;
mod hardening;
mod journeys;
mod live;
mod memory;
mod merges;
mod protection;
mod redis_server;
mod restart;
mod suggestions;
mod tokens;
