mod helpers;

mod contract;
