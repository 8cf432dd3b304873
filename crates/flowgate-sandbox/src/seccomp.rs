//! The seccomp filters of sandboxed code, as allow-lists compiled to classic BPF.
//!
//! Each filter allows only the system calls its process needs (some only with given arguments),
//! kills a process that uses a foreign system-call ABI (32-bit or x32 calls from a 64-bit
//! process), and refuses every other call as [`Refusal`] says: with `EPERM` (what Dify's sandbox
//! gives, so code that catches `PermissionError` behaves the same), either straight from the
//! filter or through a seccomp user notification that the Python zygote answers with `EPERM`
//! after noting the call's name, so a failed execution can say which call was refused.
//! `clone3` gets `ENOSYS`, so the C library falls back to `clone` (which the filter checks).
//!
//! Why hand-assembled rather than `seccompiler`: the zygote that installs the Python filters is
//! CPython, not Rust, and needs the program as bytes with the slots of its own pid; the program
//! is small enough to check instruction by instruction in the tests, which run it in a
//! BPF interpreter. The JavaScript worker installs its program with `seccompiler`. The calls are
//! found by a binary search over ranges of numbers, so a call costs a dozen comparisons and
//! installing the filter (the kernel runs it over every number to cache which calls are always
//! allowed) costs little: with a flat list it was a tenth of an execution's time.

use crate::syscalls::TABLE;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// What a refused call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `EPERM` from the filter itself.
    Errno,
    /// A user notification: the process holding the filter's listener answers (with `EPERM`).
    Notify,
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_003E);
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_00B7);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: Option<u32> = None;
/// x32 calls from an x86-64 process carry this bit in their number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_JA: u16 = 0x05;
const BPF_RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7FFF_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_USER_NOTIF: u32 = 0x7FC0_0000;
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// The low 32 bits of argument `index` (little-endian `seccomp_data`).
const fn argument_offset(index: u8) -> u32 {
    16 + 8 * index as u32
}

/// A value an argument may take: a constant, or the calling process's own pid (as it sees it),
/// which the process writes into its copy of the program before installing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    Is(u32),
    OwnPid,
}

/// When an allowed call is allowed.
#[derive(Debug, Clone, Copy)]
pub enum Condition {
    Always,
    /// The low 32 bits of argument `index` are one of `values`.
    ArgumentIn {
        index: u8,
        values: &'static [Value],
    },
    /// Argument `index` has every bit of `mask` set.
    ArgumentHas {
        index: u8,
        mask: u32,
    },
}

/// One filter's rules. Names unknown to this architecture's table are skipped (`open` does not
/// exist on aarch64, for example).
#[derive(Debug, Clone)]
pub struct Policy {
    pub allowed: Vec<(&'static str, Condition)>,
}

/// A compiled filter: `sock_filter` instructions as the kernel reads them (`u16 code, u8 jt,
/// u8 jf, u32 k`, little-endian), and the byte offsets of the `k` fields to fill with the
/// process's own pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub bytes: Vec<u8>,
    pub own_pid_slots: Vec<usize>,
}

impl Program {
    /// The instructions with the pid slots filled in.
    pub fn with_own_pid(&self, pid: u32) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        for &slot in &self.own_pid_slots {
            bytes[slot..slot + 4].copy_from_slice(&pid.to_le_bytes());
        }
        bytes
    }

    /// The instructions as `(code, jt, jf, k)`.
    pub fn instructions(bytes: &[u8]) -> impl Iterator<Item = (u16, u8, u8, u32)> + '_ {
        bytes.chunks_exact(8).map(|chunk| {
            (u16::from_le_bytes([chunk[0], chunk[1]]), chunk[2], chunk[3], u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]))
        })
    }
}

/// Whether this build has a seccomp filter (x86-64 and aarch64).
pub fn supported() -> bool {
    AUDIT_ARCH.is_some()
}

pub fn number_of(name: &str) -> Option<u32> {
    TABLE.iter().find(|(known, _)| *known == name).map(|&(_, number)| number)
}

pub fn name_of(number: u32) -> Option<&'static str> {
    TABLE.iter().find(|&&(_, known)| known == number).map(|&(name, _)| name)
}

/// Every call this architecture knows, by number, for naming refusals.
pub fn names() -> impl Iterator<Item = (u32, &'static str)> {
    TABLE.iter().map(|&(name, number)| (number, name))
}

/// One instruction; `own_pid` marks a `k` the process fills with its pid.
#[derive(Debug, Clone, Copy)]
struct Instruction {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
    own_pid: bool,
}

const fn op(code: u16, jt: u8, jf: u8, k: u32) -> Instruction {
    Instruction { code, jt, jf, k, own_pid: false }
}

/// A comparison of A with `value`, jumping `jt` ahead when equal.
fn compare(value: Value, jt: u8, jf: u8) -> Instruction {
    match value {
        Value::Is(constant) => op(BPF_JEQ_K, jt, jf, constant),
        Value::OwnPid => Instruction { own_pid: true, ..op(BPF_JEQ_K, jt, jf, 0) },
    }
}

/// What the filter does with the calls of a range of numbers.
#[derive(Debug, Clone, Copy)]
enum Action {
    Allow,
    Refuse,
    Enosys,
    Check(Condition),
}

/// The numbers from `low` up to the next case's `low` (or on), with one action.
#[derive(Debug, Clone, Copy)]
struct Case {
    low: u32,
    action: Action,
}

/// The code for one case, entered with the number in A and ending in returns.
fn leaf(action: Action, refuse: u32) -> Option<Vec<Instruction>> {
    Some(match action {
        Action::Allow | Action::Check(Condition::Always) => vec![op(BPF_RET_K, 0, 0, RET_ALLOW)],
        Action::Refuse => vec![op(BPF_RET_K, 0, 0, refuse)],
        Action::Enosys => vec![op(BPF_RET_K, 0, 0, RET_ERRNO | ENOSYS)],
        Action::Check(Condition::ArgumentIn { index, values }) => {
            // ld arg; one comparison per value (each jumps to the allow at the end); refuse; allow.
            let count = u8::try_from(values.len()).ok().filter(|count| *count < 250)?;
            let mut code = vec![op(BPF_LD_W_ABS, 0, 0, argument_offset(index))];
            for (position, value) in values.iter().enumerate() {
                code.push(compare(*value, count - position as u8, 0));
            }
            code.extend([op(BPF_RET_K, 0, 0, refuse), op(BPF_RET_K, 0, 0, RET_ALLOW)]);
            code
        }
        Action::Check(Condition::ArgumentHas { index, mask }) => vec![
            op(BPF_LD_W_ABS, 0, 0, argument_offset(index)),
            op(BPF_JSET_K, 1, 0, mask),
            op(BPF_RET_K, 0, 0, refuse),
            op(BPF_RET_K, 0, 0, RET_ALLOW),
        ],
    })
}

/// A binary search over `cases`, which partition every number from the first case's low on:
/// a call takes a handful of comparisons, and the kernel's check of which calls are always
/// allowed (run over every number when the filter is installed) stays cheap.
fn tree(cases: &[Case], refuse: u32) -> Option<Vec<Instruction>> {
    match cases {
        [] => Some(vec![op(BPF_RET_K, 0, 0, refuse)]),
        [case] => leaf(case.action, refuse),
        _ => {
            let middle = cases.len() / 2;
            let (left, right) = (tree(&cases[..middle], refuse)?, tree(&cases[middle..], refuse)?);
            let mut code = match u8::try_from(left.len()) {
                Ok(skip) => vec![op(BPF_JGE_K, skip, 0, cases[middle].low)],
                // Past a jump's reach: an unconditional jump carries the way to the right.
                Err(_) => vec![op(BPF_JGE_K, 0, 1, cases[middle].low), op(BPF_JA, 0, 0, u32::try_from(left.len()).ok()?)],
            };
            code.extend(left);
            code.extend(right);
            Some(code)
        }
    }
}

/// The policy as sorted cases, with consecutive always-allowed numbers merged.
fn cases(policy: &Policy) -> Vec<Case> {
    let mut numbered: Vec<(u32, Action)> = policy
        .allowed
        .iter()
        .filter_map(|&(name, condition)| {
            let action = match condition {
                Condition::Always => Action::Allow,
                other => Action::Check(other),
            };
            Some((number_of(name)?, action))
        })
        .collect();
    if let Some(clone3) = number_of("clone3") {
        numbered.push((clone3, Action::Enosys));
    }
    numbered.sort_by_key(|(number, _)| *number);
    numbered.dedup_by_key(|(number, _)| *number);
    // Every number gets a case: runs of allowed numbers merged, the gaps between refused.
    let mut cases: Vec<Case> = Vec::new();
    let mut next = 0;
    for (number, action) in numbered {
        if number > next {
            cases.push(Case { low: next, action: Action::Refuse });
        }
        let extends = matches!(action, Action::Allow) && cases.last().is_some_and(|case| matches!(case.action, Action::Allow));
        if !extends {
            cases.push(Case { low: number, action });
        }
        next = number + 1;
    }
    cases.push(Case { low: next, action: Action::Refuse });
    cases
}

/// Compiles `policy`; `None` where this build has no filter for its architecture.
pub fn compile(policy: &Policy, refusal: Refusal) -> Option<Program> {
    let arch = AUDIT_ARCH?;
    let refuse = match refusal {
        Refusal::Errno => RET_ERRNO | EPERM,
        Refusal::Notify => RET_USER_NOTIF,
    };
    let mut code = vec![op(BPF_LD_W_ABS, 0, 0, OFFSET_ARCH), op(BPF_JEQ_K, 1, 0, arch), op(BPF_RET_K, 0, 0, RET_KILL_PROCESS)];
    code.push(op(BPF_LD_W_ABS, 0, 0, OFFSET_NR));
    if cfg!(target_arch = "x86_64") {
        code.extend([op(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT), op(BPF_RET_K, 0, 0, RET_KILL_PROCESS)]);
    }
    code.extend(tree(&cases(policy), refuse)?);
    let mut program = Program { bytes: Vec::with_capacity(code.len() * 8), own_pid_slots: Vec::new() };
    for instruction in code {
        if instruction.own_pid {
            program.own_pid_slots.push(program.bytes.len() + 4);
        }
        program.bytes.extend_from_slice(&instruction.code.to_le_bytes());
        program.bytes.extend_from_slice(&[instruction.jt, instruction.jf]);
        program.bytes.extend_from_slice(&instruction.k.to_le_bytes());
    }
    Some(program)
}

const AF_UNIX: Value = Value::Is(1);
const CLONE_THREAD: u32 = 0x0001_0000;

/// What CPython, its standard library and the packages teams preload (numpy, pandas, requests)
/// call, found by tracing them (docs/sandbox.md), in rough order of frequency. Nothing here
/// reaches beyond the process: no new processes or programs, no tracing, no namespaces or
/// mounts, no credentials, no System V IPC, no keyrings, no kernel interfaces (bpf, io_uring,
/// perf, userfaultfd). Sockets only when code may use the network; signals and resource limits
/// only for the process itself.
pub fn python_policy(network: bool) -> Policy {
    use Condition::{Always, ArgumentHas, ArgumentIn};
    const SELF_OR_GROUP: &[Value] = &[Value::OwnPid, Value::Is(0)];
    const SELF: &[Value] = &[Value::OwnPid];
    const TERMINAL_QUERIES: &[Value] = &[
        Value::Is(0x5401), // TCGETS (isatty)
        Value::Is(0x5413), // TIOCGWINSZ
        Value::Is(0x540F), // TIOCGPGRP
        Value::Is(0x541B), // FIONREAD
        Value::Is(0x5421), // FIONBIO
        Value::Is(0x5450), // FIONCLEX
        Value::Is(0x5451), // FIOCLEX
    ];
    const PRCTL_OPTIONS: &[Value] = &[
        Value::Is(2),           // PR_GET_PDEATHSIG
        Value::Is(3),           // PR_GET_DUMPABLE
        Value::Is(15),          // PR_SET_NAME (thread names)
        Value::Is(16),          // PR_GET_NAME
        Value::Is(21),          // PR_GET_SECCOMP
        Value::Is(23),          // PR_CAPBSET_READ
        Value::Is(30),          // PR_GET_TIMERSLACK
        Value::Is(39),          // PR_GET_NO_NEW_PRIVS
        Value::Is(42),          // PR_GET_THP_DISABLE
        Value::Is(0x5356_4d41), // PR_SET_VMA (the C library names its mappings)
    ];
    const SOCKET_DOMAINS: &[Value] = &[AF_UNIX, Value::Is(2), Value::Is(10), Value::Is(16)]; // unix, inet, inet6, netlink (getaddrinfo)
    let mut allowed: Vec<(&'static str, Condition)> = [
        "read",
        "write",
        "futex",
        "mmap",
        "munmap",
        "brk",
        "mprotect",
        "mremap",
        "madvise",
        "close",
        "openat",
        "open",
        "newfstatat",
        "fstat",
        "stat",
        "lstat",
        "statx",
        "lseek",
        "pread64",
        "pwrite64",
        "readv",
        "writev",
        "preadv",
        "pwritev",
        "preadv2",
        "pwritev2",
        "getdents64",
        "getdents",
        "fcntl",
        "dup",
        "dup2",
        "dup3",
        "pipe",
        "pipe2",
        "poll",
        "ppoll",
        "select",
        "pselect6",
        "epoll_create",
        "epoll_create1",
        "epoll_ctl",
        "epoll_wait",
        "epoll_pwait",
        "epoll_pwait2",
        "eventfd",
        "eventfd2",
        "clock_gettime",
        "clock_getres",
        "clock_nanosleep",
        "nanosleep",
        "gettimeofday",
        "time",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "rt_sigpending",
        "rt_sigtimedwait",
        "rt_sigsuspend",
        "sigaltstack",
        "restart_syscall",
        "getpid",
        "gettid",
        "getppid",
        "getuid",
        "geteuid",
        "getgid",
        "getegid",
        "getresuid",
        "getresgid",
        "getgroups",
        "getpgrp",
        "getpgid",
        "getsid",
        "getcwd",
        "chdir",
        "fchdir",
        "access",
        "faccessat",
        "faccessat2",
        "readlink",
        "readlinkat",
        "mkdir",
        "mkdirat",
        "rmdir",
        "unlink",
        "unlinkat",
        "rename",
        "renameat",
        "renameat2",
        "link",
        "linkat",
        "symlink",
        "symlinkat",
        "chmod",
        "fchmod",
        "fchmodat",
        "fchmodat2",
        "chown",
        "fchown",
        "lchown",
        "fchownat",
        "truncate",
        "ftruncate",
        "fallocate",
        "fsync",
        "fdatasync",
        "sync_file_range",
        "fadvise64",
        "readahead",
        "flock",
        "umask",
        "utime",
        "utimes",
        "utimensat",
        "futimesat",
        "statfs",
        "fstatfs",
        "getxattr",
        "lgetxattr",
        "fgetxattr",
        "listxattr",
        "llistxattr",
        "flistxattr",
        "setxattr",
        "lsetxattr",
        "fsetxattr",
        "removexattr",
        "lremovexattr",
        "fremovexattr",
        "sendfile",
        "copy_file_range",
        "splice",
        "tee",
        "memfd_create",
        "msync",
        "mincore",
        "mbind",
        "get_mempolicy",
        "membarrier",
        "mseal",
        "map_shadow_stack",
        "set_tid_address",
        "set_robust_list",
        "rseq",
        "futex_waitv",
        "futex_wake",
        "futex_wait",
        "futex_requeue",
        "sched_yield",
        "sched_getaffinity",
        "sched_getparam",
        "sched_getscheduler",
        "sched_get_priority_max",
        "sched_get_priority_min",
        "sched_getattr",
        "sched_rr_get_interval",
        "getpriority",
        "getcpu",
        "getrandom",
        "uname",
        "sysinfo",
        "times",
        "getrusage",
        "getrlimit",
        "setrlimit",
        "getitimer",
        "setitimer",
        "alarm",
        "timer_create",
        "timer_settime",
        "timer_gettime",
        "timer_getoverrun",
        "timer_delete",
        "timerfd_create",
        "timerfd_settime",
        "timerfd_gettime",
        "signalfd",
        "signalfd4",
        "pause",
        "exit",
        "exit_group",
        "wait4",
        "waitid",
        "arch_prctl",
        "capget",
        "close_range",
        "openat2",
        "sendto",
        "recvfrom",
        "sendmsg",
        "recvmsg",
        "sendmmsg",
        "recvmmsg",
        "shutdown",
        "getsockname",
        "getpeername",
        "getsockopt",
        "setsockopt",
    ]
    .into_iter()
    .map(|name| (name, Always))
    .collect();
    allowed.extend([
        ("clone", ArgumentHas { index: 0, mask: CLONE_THREAD }),
        ("kill", ArgumentIn { index: 0, values: SELF_OR_GROUP }),
        ("tgkill", ArgumentIn { index: 0, values: SELF }),
        ("tkill", ArgumentIn { index: 0, values: SELF }),
        ("rt_sigqueueinfo", ArgumentIn { index: 0, values: SELF }),
        ("rt_tgsigqueueinfo", ArgumentIn { index: 0, values: SELF }),
        ("prlimit64", ArgumentIn { index: 0, values: SELF_OR_GROUP }),
        ("ioctl", ArgumentIn { index: 1, values: TERMINAL_QUERIES }),
        ("prctl", ArgumentIn { index: 0, values: PRCTL_OPTIONS }),
        ("socketpair", ArgumentIn { index: 0, values: &[AF_UNIX] }),
    ]);
    if network {
        allowed.push(("socket", ArgumentIn { index: 0, values: SOCKET_DOMAINS }));
        allowed.extend(["connect", "bind", "listen", "accept", "accept4"].into_iter().map(|name| (name, Always)));
    }
    Policy { allowed }
}

/// The JavaScript worker (QuickJS): after it has started it only reads requests, writes answers
/// and manages its memory.
pub fn javascript_policy() -> Policy {
    use Condition::{Always, ArgumentIn};
    let mut allowed: Vec<(&'static str, Condition)> = [
        "futex",
        "mmap",
        "munmap",
        "brk",
        "mremap",
        "madvise",
        "mprotect",
        "clock_gettime",
        "clock_getres",
        "gettimeofday",
        "rt_sigreturn",
        "rt_sigprocmask",
        "sigaltstack",
        "getrandom",
        "sched_yield",
        "exit",
        "exit_group",
        "getpid",
        "gettid",
        "restart_syscall",
    ]
    .into_iter()
    .map(|name| (name, Always))
    .collect();
    allowed.extend([
        ("read", ArgumentIn { index: 0, values: &[Value::Is(0)] }),
        ("write", ArgumentIn { index: 0, values: &[Value::Is(1), Value::Is(2)] }),
        // abort() signals the process itself.
        ("tgkill", ArgumentIn { index: 0, values: &[Value::OwnPid] }),
        ("rt_sigaction", Always),
    ]);
    Policy { allowed }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KILL: u32 = RET_KILL_PROCESS;
    const BPF_JGT_K: u16 = 0x25;

    /// A classic-BPF interpreter for the instructions `compile` emits, run on one `seccomp_data`.
    fn run(bytes: &[u8], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        run_counting(bytes, arch, nr, args).0
    }

    /// The verdict and how many instructions it took.
    fn run_counting(bytes: &[u8], arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
        let instructions: Vec<_> = Program::instructions(bytes).collect();
        let mut data = Vec::new();
        data.extend_from_slice(&nr.to_le_bytes());
        data.extend_from_slice(&arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        for arg in args {
            data.extend_from_slice(&arg.to_le_bytes());
        }
        let (mut pc, mut a, mut steps) = (0usize, 0u32, 0usize);
        loop {
            let (code, jt, jf, k) = instructions[pc];
            pc += 1;
            steps += 1;
            match code {
                BPF_LD_W_ABS => {
                    let at = k as usize;
                    a = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
                }
                BPF_JEQ_K => pc += if a == k { jt } else { jf } as usize,
                BPF_JGE_K => pc += if a >= k { jt } else { jf } as usize,
                BPF_JGT_K => pc += if a > k { jt } else { jf } as usize,
                BPF_JA => pc += k as usize,
                BPF_JSET_K => pc += if a & k != 0 { jt } else { jf } as usize,
                BPF_RET_K => return (k, steps),
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    fn verdict(program: &Program, pid: u32, name: &str, args: [u64; 6]) -> u32 {
        run(&program.with_own_pid(pid), AUDIT_ARCH.unwrap(), number_of(name).unwrap(), args)
    }

    /// What the Python filters do with a refused call: notify the zygote.
    const REFUSED: u32 = RET_USER_NOTIF;

    #[test]
    fn the_x86_64_table_matches_the_c_library() {
        #[cfg(target_arch = "x86_64")]
        for (name, expected) in [
            ("read", libc::SYS_read),
            ("ptrace", libc::SYS_ptrace),
            ("socket", libc::SYS_socket),
            ("clone3", libc::SYS_clone3),
            ("io_uring_setup", libc::SYS_io_uring_setup),
            ("prlimit64", libc::SYS_prlimit64),
            ("shmget", libc::SYS_shmget),
            ("keyctl", libc::SYS_keyctl),
            ("mseal", libc::SYS_mseal),
        ] {
            assert_eq!(number_of(name), Some(expected as u32), "{name}");
        }
        let mut numbers: Vec<u32> = TABLE.iter().map(|&(_, number)| number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), TABLE.len(), "a number appears twice");
    }

    #[test]
    fn every_policy_name_is_a_real_call() {
        let aarch64_lacks = [
            "open",
            "stat",
            "lstat",
            "access",
            "pipe",
            "select",
            "poll",
            "dup2",
            "epoll_create",
            "epoll_wait",
            "eventfd",
            "signalfd",
            "getdents",
            "readlink",
            "mkdir",
            "rmdir",
            "unlink",
            "rename",
            "link",
            "symlink",
            "chmod",
            "chown",
            "lchown",
            "utime",
            "utimes",
            "futimesat",
            "time",
            "alarm",
            "pause",
            "getpgrp",
            "arch_prctl",
            "getrlimit",
            "setrlimit",
            "map_shadow_stack",
            "fstat",
        ];
        for network in [false, true] {
            for (name, _) in python_policy(network).allowed.iter().chain(&javascript_policy().allowed) {
                assert!(number_of(name).is_some() || (cfg!(target_arch = "aarch64") && aarch64_lacks.contains(name)), "{name}");
            }
        }
    }

    #[test]
    fn python_children_get_what_cpython_needs_and_nothing_that_reaches_outside() {
        let program = compile(&python_policy(false), Refusal::Notify).unwrap();
        let pid = 1;
        for name in ["read", "write", "mmap", "openat", "futex", "getrandom", "rt_sigaction", "exit_group", "socketpair"] {
            let args = if name == "socketpair" { [1, 1, 0, 0, 0, 0] } else { [0; 6] };
            assert_eq!(verdict(&program, pid, name, args), RET_ALLOW, "{name}");
        }
        for name in [
            "socket",
            "connect",
            "ptrace",
            "execve",
            "fork",
            "vfork",
            "unshare",
            "setns",
            "mount",
            "bpf",
            "io_uring_setup",
            "userfaultfd",
            "perf_event_open",
            "keyctl",
            "add_key",
            "shmget",
            "msgget",
            "semget",
            "process_vm_readv",
            "pidfd_open",
            "setuid",
            "capset",
            "chroot",
            "init_module",
            "kexec_load",
            "open_by_handle_at",
            "mknod",
            "syslog",
            "personality",
            "seccomp",
            "sethostname",
            "inotify_init1",
        ] {
            assert_eq!(verdict(&program, pid, name, [2, 1, 0, 0, 0, 0]), REFUSED, "{name}");
        }
        assert_eq!(verdict(&program, pid, "clone3", [0; 6]), RET_ERRNO | ENOSYS);
        // Threads, not processes.
        let thread = u64::from(CLONE_THREAD | 0x100 | 0x200 | 0x400 | 0x800);
        assert_eq!(verdict(&program, pid, "clone", [thread, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(verdict(&program, pid, "clone", [17, 0, 0, 0, 0, 0]), REFUSED);
        // Signals and limits for itself only.
        for (name, target) in [("kill", 1), ("kill", 0), ("tgkill", 1), ("prlimit64", 0), ("prlimit64", 1)] {
            assert_eq!(verdict(&program, pid, name, [target, 9, 0, 0, 0, 0]), RET_ALLOW, "{name}({target})");
        }
        for (name, target) in [("kill", u64::from(u32::MAX)), ("kill", 4242), ("tgkill", 4242), ("prlimit64", 4242), ("tkill", 2)] {
            assert_eq!(verdict(&program, pid, name, [target, 9, 0, 0, 0, 0]), REFUSED, "{name}({target})");
        }
        // The same program for another pid (a child outside a pid namespace).
        assert_eq!(verdict(&program, 4242, "prlimit64", [4242, 7, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(verdict(&program, 4242, "prlimit64", [1, 7, 0, 0, 0, 0]), REFUSED);
        // isatty, not terminal injection.
        assert_eq!(verdict(&program, pid, "ioctl", [1, 0x5401, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(verdict(&program, pid, "ioctl", [0, 0x5412, 0, 0, 0, 0]), REFUSED); // TIOCSTI
        assert_eq!(verdict(&program, pid, "prctl", [15, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(verdict(&program, pid, "prctl", [4, 1, 0, 0, 0, 0]), REFUSED); // PR_SET_DUMPABLE
        assert_eq!(verdict(&program, pid, "prctl", [0x59616d61, 0, 0, 0, 0, 0]), REFUSED); // PR_SET_PTRACER
        assert_eq!(verdict(&program, pid, "socketpair", [2, 1, 0, 0, 0, 0]), REFUSED);
    }

    #[test]
    fn foreign_abis_kill_and_unknown_numbers_are_refused() {
        let program = compile(&python_policy(false), Refusal::Notify).unwrap();
        let bytes = program.with_own_pid(1);
        assert_eq!(run(&bytes, 0x4000_0003, 1, [0; 6]), KILL, "i386 calls from a 64-bit process");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(run(&bytes, AUDIT_ARCH.unwrap(), X32_SYSCALL_BIT | 1, [0; 6]), KILL, "x32 calls");
        assert_eq!(run(&bytes, AUDIT_ARCH.unwrap(), 100_000, [0; 6]), RET_USER_NOTIF);
    }

    #[test]
    fn code_with_network_may_open_internet_and_local_sockets_only() {
        let program = compile(&python_policy(true), Refusal::Notify).unwrap();
        for domain in [1, 2, 10, 16] {
            assert_eq!(verdict(&program, 1, "socket", [domain, 1, 0, 0, 0, 0]), RET_ALLOW, "domain {domain}");
        }
        assert_eq!(verdict(&program, 1, "socket", [17, 3, 0, 0, 0, 0]), REFUSED, "AF_PACKET");
        assert_eq!(verdict(&program, 1, "connect", [3, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(verdict(&program, 1, "ptrace", [0; 6]), REFUSED);
    }

    /// What `policy` says of one call, read straight from the rules.
    fn reference(policy: &Policy, refuse: u32, pid: u32, nr: u32, args: [u64; 6]) -> u32 {
        if Some(nr) == number_of("clone3") {
            return RET_ERRNO | ENOSYS;
        }
        let Some(&(_, condition)) = policy.allowed.iter().find(|(name, _)| number_of(name) == Some(nr)) else {
            return refuse;
        };
        let allowed = match condition {
            Condition::Always => true,
            Condition::ArgumentIn { index, values } => values.iter().any(|value| {
                let wanted = match value {
                    Value::Is(constant) => *constant,
                    Value::OwnPid => pid,
                };
                args[usize::from(index)] as u32 == wanted
            }),
            Condition::ArgumentHas { index, mask } => args[usize::from(index)] as u32 & mask == mask,
        };
        if allowed { RET_ALLOW } else { refuse }
    }

    /// The binary search gives, for every number and a spread of arguments, what the rules say.
    #[test]
    fn the_compiled_search_agrees_with_the_rules_for_every_call() {
        let argument_sets: [[u64; 6]; 6] =
            [[0; 6], [1; 6], [2, 1, 0, 0, 0, 0], [77, 77, 77, 77, 77, 77], [0x10000 | 17, 0x5401, 0, 0, 0, 0], [u64::MAX; 6]];
        for (policy, refuse, refusal) in [
            (python_policy(false), RET_USER_NOTIF, Refusal::Notify),
            (python_policy(true), RET_ERRNO | EPERM, Refusal::Errno),
            (javascript_policy(), RET_ERRNO | EPERM, Refusal::Errno),
        ] {
            let program = compile(&policy, refusal).unwrap();
            let bytes = program.with_own_pid(77);
            let mut longest = 0;
            for nr in 0..1100 {
                for args in argument_sets {
                    let (got, steps) = run_counting(&bytes, AUDIT_ARCH.unwrap(), nr, args);
                    longest = longest.max(steps);
                    assert_eq!(got, reference(&policy, refuse, 77, nr, args), "call {nr} ({:?}) with {args:?}", name_of(nr));
                }
            }
            // A binary search: a call never walks more than a few dozen instructions.
            assert!(longest <= 30, "{longest} instructions for one call ({} in all)", bytes.len() / 8);
        }
    }

    #[test]
    fn without_a_listener_refusals_are_eperm() {
        let program = compile(&python_policy(false), Refusal::Errno).unwrap();
        assert_eq!(verdict(&program, 1, "ptrace", [0; 6]), RET_ERRNO | EPERM);
        assert_eq!(verdict(&program, 1, "kill", [4242, 9, 0, 0, 0, 0]), RET_ERRNO | EPERM);
        assert_eq!(verdict(&program, 1, "clone3", [0; 6]), RET_ERRNO | ENOSYS);
        assert_eq!(verdict(&program, 1, "read", [0; 6]), RET_ALLOW);
    }

    #[test]
    fn the_javascript_worker_reads_its_requests_and_writes_its_answers_only() {
        let program = compile(&javascript_policy(), Refusal::Errno).unwrap();
        assert_eq!(verdict(&program, 77, "read", [0, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(verdict(&program, 77, "read", [5, 0, 0, 0, 0, 0]), RET_ERRNO | EPERM);
        assert_eq!(verdict(&program, 77, "write", [1, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(verdict(&program, 77, "write", [3, 0, 0, 0, 0, 0]), RET_ERRNO | EPERM);
        assert_eq!(verdict(&program, 77, "tgkill", [77, 77, 6, 0, 0, 0]), RET_ALLOW);
        for name in ["openat", "socket", "clone", "execve", "kill", "mmap"] {
            let expected = if name == "mmap" { RET_ALLOW } else { RET_ERRNO | EPERM };
            assert_eq!(verdict(&program, 77, name, [0; 6]), expected, "{name}");
        }
    }
}
