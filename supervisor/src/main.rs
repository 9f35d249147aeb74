//! `wirebot`: the supervisor daemon and its admin CLI (a thin shell over the `supervisor` library).

fn main() {}
