// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! seccomp filters, one per kind of thread, built with rust-vmm's `seccompiler`.
//!
//! Allowlists: a syscall not listed is refused with `kill` (the whole process ends
//! with SIGSYS) or let through and logged by the kernel with `log` (an audit record,
//! `type=1326 ... syscall=N`, in `dmesg`). Arguments are checked where that is cheap:
//! `ioctl` request numbers, `socket` address families, `prctl` options, `fcntl`
//! commands, `rt_sigaction` signals, `seccomp` operations, and no `PROT_EXEC` in
//! `mmap`/`mprotect`.
//!
//! Every thread may use memory, futexes, clocks and sleeps, write its log lines to
//! stderr, exit, and `sendto`: the SIGINT/SIGTERM handler (signal-hook's pipe) runs on
//! whichever thread the signal hits and sends a byte to the stop pipe.
//!
//! - [`ThreadKind::Stats`]: the stats file writer only writes a temporary file and
//!   renames it, sleeps, and logs.
//! - [`ThreadKind::Api`]: the HTTP server of `--metrics` and `--api-socket`: `poll`
//!   over its listening sockets and connections, `accept4`, `FIONBIO`, `recvfrom`,
//!   `sendto` and `shutdown` on the connections (and `fcntl(F_GETFD)`), and reading /proc/self (`openat`,
//!   `getdents64`, `fstat`) for the process metrics. It is started before the control
//!   thread enters its filter, so it runs under its own alone.
//! - [`ThreadKind::Worker`]: a queue pair's epoll loop over eventfds, a timerfd and the
//!   uplink queue: `readv`/`writev` on a TAP, `sendto` kicks, `ppoll` and `recvfrom` on
//!   AF_XDP sockets; plus what the rare paths of a worker do: reopening a deleted TAP
//!   (`openat` of /dev/net/tun, the TUN ioctls, `if_nametoindex`'s socket and ioctl),
//!   registering guest memory as a zero-copy UMEM (memfd `mmap`, an AF_XDP socket,
//!   `setsockopt`/`getsockopt`/`bind`), and the SIGBUS handler's `mmap` and `write`
//!   (and `rt_sigaction(SIGBUS)` for a fault that is not in guest memory).
//! - [`ThreadKind::Control`]: the vhost-user request loop: `recvmsg`/`sendmsg` with
//!   fds, `accept4` (or `connect` with `--client`), memfd `mmap`s for SET_MEM_TABLE,
//!   ADD_MEM_REG and SET_LOG_BASE, `fstat` checks, SEND_RARP's AF_PACKET socket and
//!   `sendto`, `TUNSETCARRIER` around a migration's handover, a `socketpair` per
//!   connection, starting and stopping workers (`clone3`,
//!   eventfds, and what a new thread does before its own filter: naming itself and
//!   installing that filter with `prctl` and `seccomp`), the final stats
//!   file and the socket file's removal at exit. Workers are started by the control
//!   thread and inherit its filter beneath their own (the kernel runs both and the
//!   stricter answer wins), so the control filter also allows every worker syscall.

use std::collections::BTreeMap;
use std::fmt;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What a filter does with a syscall it does not allow (`--seccomp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// Kill the process (SIGSYS) on any syscall outside its thread's list.
    Kill,
    /// Allow it, but have the kernel log it (SECCOMP_RET_LOG: an audit record in dmesg
    /// naming the syscall number): for finding what a new code path needs.
    Log,
    /// No filter.
    Off,
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Kill => "kill",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

/// The kinds of thread, one filter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: the vhost-user request loop.
    Control,
    /// A queue pair's worker.
    Worker,
    /// The stats file writer.
    Stats,
    /// The HTTP server (`--metrics`, `--api-socket`).
    Api,
}

impl ThreadKind {
    /// Lowercase name, as in logs and `VNM_SECCOMP_SELFTEST`.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Control => "control",
            ThreadKind::Worker => "worker",
            ThreadKind::Stats => "stats",
            ThreadKind::Api => "api",
        }
    }
}

/// Building or installing a filter failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be built.
    #[error("cannot build the {0} seccomp filter: {1}")]
    Build(&'static str, seccompiler::BackendError),
    /// The filter could not be installed.
    #[error("cannot install the {0} seccomp filter: {1}")]
    Install(&'static str, seccompiler::Error),
}

/// The TUN ioctls (linux/if_tun.h), as the TAP code issues them.
mod tun {
    #![allow(missing_docs)]
    use vmm_sys_util::ioctl_iow_nr;
    const TUNTAP_TYPE: u32 = b'T' as u32;
    ioctl_iow_nr!(TUNSETIFF, TUNTAP_TYPE, 202, libc::c_int);
    ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP_TYPE, 208, libc::c_uint);
    ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP_TYPE, 216, libc::c_int);
    ioctl_iow_nr!(TUNSETCARRIER, TUNTAP_TYPE, 226, libc::c_int);
}

/// glibc's internal SIGSETXID (`__SIGRTMIN + 1`, below the SIGRTMIN glibc reports).
const SIGSETXID: u64 = 33;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// Allow `syscalls` whatever their arguments. The lists name the syscalls of both
/// x86_64 and aarch64; the older ones only x86_64 has (`poll`, `rename`, ...) are added
/// for x86_64 alone.
fn allow(rules: &mut Rules, syscalls: &[libc::c_long]) {
    for &nr in syscalls {
        // Replaces any argument conditions: allowed whatever the arguments.
        rules.insert(nr, Vec::new());
    }
}

/// Allow `syscall` when argument `arg` (32 bits) equals one of `values` (a syscall
/// already allowed whatever its arguments stays so).
fn allow_arg(rules: &mut Rules, syscall: libc::c_long, arg: u8, values: &[u64]) {
    if rules.get(&syscall).is_some_and(Vec::is_empty) {
        return;
    }
    let entry = rules.entry(syscall).or_default();
    for &v in values {
        // Arg 0..=5 and a plain equality cannot fail to build.
        if let Ok(c) = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v) {
            if let Ok(r) = SeccompRule::new(vec![c]) {
                entry.push(r);
            }
        }
    }
}

fn u(v: libc::c_int) -> u64 {
    u64::from(v.unsigned_abs())
}

/// What every thread does: memory, locks, time, sleeping, logging to stderr, the
/// signal handlers, exiting.
fn base(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_futex,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_brk,
            libc::SYS_sched_yield,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_getrandom,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sigaltstack,
            libc::SYS_restart_syscall,
            // signal-hook's SIGINT/SIGTERM handler runs on whichever thread the signal
            // hits and sends a byte to the stop pipe.
            libc::SYS_sendto,
            libc::SYS_exit,
            libc::SYS_exit_group,
            // A panic's backtrace (RUST_BACKTRACE) reads the executable's debug info
            // (with `openat`, which every thread has).
            libc::SYS_getcwd,
            libc::SYS_lseek,
            libc::SYS_statx,
        ],
    );
    // Memory, but never executable: nothing here maps code once running.
    let exec = u64::from(libc::PROT_EXEC.unsigned_abs());
    allow_without_bits(rules, libc::SYS_mmap, 2, exec);
    allow_without_bits(rules, libc::SYS_mprotect, 2, exec);
}

/// Allow `syscall` when argument `arg` has none of the bits of `mask` set.
fn allow_without_bits(rules: &mut Rules, syscall: libc::c_long, arg: u8, mask: u64) {
    // Arg 0..=5 and a masked comparison cannot fail to build.
    if let Ok(c) = SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        0,
    ) {
        if let Ok(r) = SeccompRule::new(vec![c]) {
            rules.insert(syscall, vec![r]);
        }
    }
}

/// Writing the stats file: `std::fs::write` of a temporary file, then `rename`.
fn stats_file(rules: &mut Rules) {
    allow(rules, &[libc::SYS_openat, libc::SYS_renameat2]);
    #[cfg(target_arch = "x86_64")]
    allow(rules, &[libc::SYS_rename, libc::SYS_renameat]);
}

/// The HTTP server thread (see the module doc).
fn api(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_ppoll,
            libc::SYS_accept4,
            libc::SYS_recvfrom,
            libc::SYS_shutdown,
            libc::SYS_openat,
            libc::SYS_getdents64,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
        ],
    );
    #[cfg(target_arch = "x86_64")]
    allow(rules, &[libc::SYS_poll]);
    allow_arg(rules, libc::SYS_ioctl, 1, &[libc::FIONBIO]);
    // The standard library checks an accepted socket's fd (F_GETFD) in debug builds.
    allow_arg(rules, libc::SYS_fcntl, 1, &[u(libc::F_GETFD)]);
}

/// A queue pair's worker (see the module doc).
fn worker(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_create1,
            libc::SYS_timerfd_create,
            libc::SYS_timerfd_settime,
            libc::SYS_eventfd2,
            libc::SYS_readv,
            libc::SYS_ppoll,
            libc::SYS_recvfrom,
            libc::SYS_openat,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_dup,
            libc::SYS_setsockopt,
            libc::SYS_getsockopt,
            libc::SYS_bind,
        ],
    );
    #[cfg(target_arch = "x86_64")]
    allow(rules, &[libc::SYS_epoll_wait, libc::SYS_poll]);
    allow_arg(
        rules,
        libc::SYS_socket,
        0,
        &[u(libc::AF_UNIX), u(libc::AF_INET), u(libc::AF_XDP)],
    );
    allow_arg(
        rules,
        libc::SYS_ioctl,
        1,
        &[
            tun::TUNSETIFF(),
            tun::TUNSETOFFLOAD(),
            tun::TUNSETVNETHDRSZ(),
            libc::SIOCGIFINDEX,
            libc::SIOCGIFFLAGS,
            libc::SIOCSIFFLAGS,
            libc::FIONBIO,
        ],
    );
    allow_arg(
        rules,
        libc::SYS_fcntl,
        1,
        &[
            u(libc::F_GETFL),
            u(libc::F_SETFL),
            u(libc::F_GETFD),
            u(libc::F_SETFD),
            u(libc::F_DUPFD_CLOEXEC),
        ],
    );
    allow_arg(rules, libc::SYS_prctl, 0, &[u(libc::PR_SET_TIMERSLACK)]);
    // The SIGBUS handler puts the previous action back for a fault outside guest memory.
    allow_arg(rules, libc::SYS_rt_sigaction, 0, &[u(libc::SIGBUS)]);
}

/// The control thread: its own needs, plus everything the workers it starts need.
fn control(rules: &mut Rules) {
    worker(rules);
    stats_file(rules);
    allow(
        rules,
        &[
            libc::SYS_accept4,
            libc::SYS_connect,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_socketpair,
            libc::SYS_shutdown,
            libc::SYS_getsockname,
            libc::SYS_unlinkat,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_sched_getaffinity,
        ],
    );
    #[cfg(target_arch = "x86_64")]
    allow(rules, &[libc::SYS_unlink]);
    // SEND_RARP over AF_XDP: a raw packet socket on the interface.
    allow_arg(rules, libc::SYS_socket, 0, &[u(libc::AF_PACKET)]);
    // A migration's handover takes the TAP's carrier down, and a resume brings it up.
    allow_arg(rules, libc::SYS_ioctl, 1, &[tun::TUNSETCARRIER()]);
    // A new thread names itself (PR_SET_NAME) and installs its own filter
    // (PR_SET_NO_NEW_PRIVS, seccomp(SECCOMP_SET_MODE_FILTER)) under this one.
    allow_arg(
        rules,
        libc::SYS_prctl,
        0,
        &[u(libc::PR_SET_NAME), u(libc::PR_SET_NO_NEW_PRIVS)],
    );
    // glibc's first pthread_create installs its SIGSETXID handler (signal 33): with no
    // stats writer the first worker is the process's first thread.
    allow_arg(rules, libc::SYS_rt_sigaction, 0, &[SIGSETXID]);
    allow_arg(
        rules,
        libc::SYS_seccomp,
        0,
        &[u64::from(libc::SECCOMP_SET_MODE_FILTER)],
    );
}

/// The rules of `kind`'s filter, by syscall number.
fn rules(kind: ThreadKind) -> Rules {
    let mut rules = Rules::new();
    base(&mut rules);
    match kind {
        ThreadKind::Control => control(&mut rules),
        ThreadKind::Worker => worker(&mut rules),
        ThreadKind::Stats => stats_file(&mut rules),
        ThreadKind::Api => api(&mut rules),
    }
    rules
}

/// How many syscalls `kind`'s filter allows (some only with given arguments).
pub fn allowed_count(kind: ThreadKind) -> usize {
    rules(kind).len()
}

/// Compile `kind`'s filter for `mode` (None with `off`).
pub fn build(kind: ThreadKind, mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let refused = match mode {
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Off => return Ok(None),
    };
    let build = |e| SeccompError::Build(kind.name(), e);
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(build)?;
    let filter =
        SeccompFilter::new(rules(kind), refused, SeccompAction::Allow, arch).map_err(build)?;
    Ok(Some(filter.try_into().map_err(build)?))
}

/// Install `prog`, `kind`'s compiled filter, on the calling thread.
pub fn install(kind: ThreadKind, prog: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(prog).map_err(|e| SeccompError::Install(kind.name(), e))
}

/// A syscall no filter allows: `socket(AF_INET6, SOCK_DGRAM)`; its result (an fd is
/// closed again). For the self-test and the unit tests.
pub fn forbidden_call() -> i32 {
    // SAFETY: socket(2) takes plain integers and touches no memory of ours.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd >= 0 {
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        unsafe { libc::close(fd) };
    }
    fd
}

#[cfg(test)]
mod tests;
