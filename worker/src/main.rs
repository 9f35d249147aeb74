//! `wirebot-worker` binary: parses flags and runs the gateway from the `worker` library.

fn main() {}
