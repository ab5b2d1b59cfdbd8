//! Listen or connect, serve connections one after another, signals.
