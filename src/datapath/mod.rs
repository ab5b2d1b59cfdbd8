//! The queue pair worker: TX, RX, notifications.
