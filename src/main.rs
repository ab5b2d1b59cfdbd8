//! vhost-netmem: command line entry point.
fn main() {}
