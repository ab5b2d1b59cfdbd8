//! Page pool microbenchmarks (placeholder until `netmem::page_pool` lands).

fn main() {}
