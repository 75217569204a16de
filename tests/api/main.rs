mod helpers;

mod concurrency;
mod contract;
mod journeys;
mod restart;
