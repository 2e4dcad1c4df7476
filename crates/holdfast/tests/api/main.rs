//! Black-box API tests: each test spawns a real `holdfast serve` on port 0 with
//! a fresh data dir and talks HTTP to it through the typed helpers in
//! `helpers.rs`.

mod audit;
mod cli;
mod containers;
mod create;
mod data;
mod delete;
mod engine;
mod erasure;
mod export;
mod failpoints;
mod files;
mod hardening;
mod helpers;
mod isolation;
mod kubernetes;
mod logs;
mod misc;
mod org;
mod orgs;
mod outage;
mod persistence;
mod recovery;
mod replicas;
mod runtime;
mod sandbox;
mod secrets;
mod snapshots;
mod sweeper;
mod tenancy;
mod usage;
mod validation;
mod visibility;
