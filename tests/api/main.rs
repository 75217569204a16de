mod helpers;

mod auth;
mod bad_input;
mod concurrency;
mod contract;
mod journeys;
mod restart;
mod suggestions;
