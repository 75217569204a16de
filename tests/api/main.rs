mod helpers;

mod auth;
mod bad_input;
mod binary;
mod concurrency;
mod contract;
mod hardening;
mod journeys;
mod merges;
mod protection;
mod restart;
mod suggestions;
mod tokens;
