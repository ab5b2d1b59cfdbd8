// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The process sandbox: a seccomp filter per kind of thread.
//!
//! Each thread enters its filter with one call to [`enter`] at the start of its run
//! function, once whatever needs broader syscalls (the uplink's set-up, the SIGBUS
//! handler, the listening socket) is done. The mode comes from `--seccomp` and is set
//! once for the process by [`init`]; a thread started before `init` (or in a unit test)
//! runs unfiltered. The filters themselves are in [`seccomp`].

pub mod seccomp;

use std::sync::OnceLock;

use seccompiler::BpfProgram;

pub use seccomp::{SeccompError, SeccompMode, ThreadKind};

/// The process's mode and its filters, compiled once by [`init`].
struct Sandbox {
    mode: SeccompMode,
    /// Control, worker, stats, api (None with `off`).
    filters: [Option<BpfProgram>; 4],
}

static SANDBOX: OnceLock<Sandbox> = OnceLock::new();

fn slot(kind: ThreadKind) -> usize {
    match kind {
        ThreadKind::Control => 0,
        ThreadKind::Worker => 1,
        ThreadKind::Stats => 2,
        ThreadKind::Api => 3,
    }
}

/// Set the process's seccomp mode (`--seccomp`) and compile every thread's filter, so
/// that a thread starting later only installs its own; the first call wins.
pub fn init(mode: SeccompMode) -> Result<(), SeccompError> {
    let filters = [
        seccomp::build(ThreadKind::Control, mode)?,
        seccomp::build(ThreadKind::Worker, mode)?,
        seccomp::build(ThreadKind::Stats, mode)?,
        seccomp::build(ThreadKind::Api, mode)?,
    ];
    let _ = SANDBOX.set(Sandbox { mode, filters });
    Ok(())
}

/// The mode set by [`init`], `off` when it was never called.
pub fn mode() -> SeccompMode {
    SANDBOX.get().map_or(SeccompMode::Off, |s| s.mode)
}

/// Install the filter of `kind` on the calling thread (nothing with `--seccomp off`
/// or before [`init`]).
///
/// A thread inherits its creator's filter and adds its own on top, so the control
/// thread's filter allows everything the workers it starts need (see [`seccomp`]).
pub fn enter(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(sandbox) = SANDBOX.get() else {
        return Ok(());
    };
    if let Some(prog) = &sandbox.filters[slot(kind)] {
        seccomp::install(kind, prog)?;
        log::debug!(
            "seccomp: {} filter installed ({})",
            kind.name(),
            sandbox.mode
        );
    }
    #[cfg(debug_assertions)]
    self_test(kind);
    Ok(())
}

/// [`enter`] for a thread that cannot hand an error back: a thread that should be
/// sandboxed and cannot be ends the process.
pub fn enter_or_exit(kind: ThreadKind) {
    if let Err(e) = enter(kind) {
        log::error!("{e}");
        std::process::exit(1);
    }
}

/// Debug builds only: with `VNM_SECCOMP_SELFTEST` naming this thread's kind
/// (`control`, `worker`, `stats`, `api`), call a syscall no filter allows,
/// `socket(AF_INET6, SOCK_DGRAM)`, right after the filter is installed, so that a test
/// can watch `kill` end the process and `log` let the call through.
#[cfg(debug_assertions)]
fn self_test(kind: ThreadKind) {
    if std::env::var_os("VNM_SECCOMP_SELFTEST").is_some_and(|v| v == kind.name()) {
        let fd = seccomp::forbidden_call();
        log::warn!(
            "seccomp self-test: socket(AF_INET6) from the {} thread returned {fd}",
            kind.name()
        );
    }
}
