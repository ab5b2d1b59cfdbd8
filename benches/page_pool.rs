//! Page pool microbenchmarks (placeholder until the pool lands).
fn main() {}
