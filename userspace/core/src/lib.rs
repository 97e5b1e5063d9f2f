//! weir's pure logic. Owns the config model and its validation, the classification of an
//! attempt's result (`Outcome`), balancers, outlier detection, the retry policy and budget,
//! routing within a service and its splits, rate limits, per-core RED stats shards and
//! access-log records. Must not: do I/O, start threads, read the
//! clock (time is an argument), or depend on a runtime. Everything here is unit-tested
//! unprivileged.

#![forbid(unsafe_code)]

pub mod accesslog;
pub mod balance;
pub mod config;
pub mod grpc;
pub mod outcome;
pub mod outlier;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod stats;
