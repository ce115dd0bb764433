//! Tools that run the whole service from outside, for people rather than for production: the
//! reliability drills ([`drill`], `billecta-drill`) and the benchmarks ([`bench`],
//! `billecta-bench`). They use the service's library and the Billecta simulator; nothing depends on
//! them.

pub mod bench;
pub mod drill;
