//! The end-to-end suite: one test binary, one module per feature, each driving the real binaries on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tidy;
