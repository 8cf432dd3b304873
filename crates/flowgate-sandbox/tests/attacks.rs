//! The escape suite: what hostile code in a code node tries against the server, the host, other
//! tenants and later executions, run with the interpreter installed three ways (a pyenv under
//! root's 0700 home, the system's Python, a virtualenv in a 0700 folder). Each attack must be
//! refused or harmless; after each, another app's code node works, the test process (standing in
//! for the server) and the host's pid 1 keep their limits, the zygotes live on and no process of
//! the attack is left behind.
//!
//! A refused call must get EPERM (as in Dify's sandbox), and the sandbox must name it: attacks
//! that expect a refusal end by raising, and the failure's message must carry the note.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use flowgate_engine::ports::{CodePort, PortErrorKind};
use flowgate_engine::value::{Map, Value};
use flowgate_sandbox::{Sandbox, seccomp};

use common::{call_as, children_of, config, layouts, limits_of, still_healthy, uids_of};

/// The children a zygote keeps forked and locked down ahead of requests.
const SPARES: usize = 2;

/// What an attack must come to.
enum Verdict {
    /// `main` returns this `result` (the attack reports what it found).
    Returns(serde_json::Value),
    /// The execution fails with a message holding one of these.
    Fails(&'static [&'static str]),
    /// The body's calls got EPERM (it checks), and the sandbox names this one as refused when
    /// the execution then fails.
    Refuses(&'static str),
}

use Verdict::{Fails, Refuses, Returns};

struct Attack {
    name: &'static str,
    /// The body of `main`, which sets `result`; the prelude below is in scope.
    body: &'static str,
    verdict: Verdict,
}

const fn attack(name: &'static str, body: &'static str, verdict: Verdict) -> Attack {
    Attack { name, body, verdict }
}

/// In scope for every attack: raw system calls by number (`NR_name` is replaced by the number),
/// the errno the filter gives a refused call, and the server's pid.
const PRELUDE: &str = r#"
import ctypes, errno, os, resource, signal, socket, struct, sys, time
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
def sys_call(number, *args):
    value = LIBC.syscall(ctypes.c_long(number), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return value if value >= 0 else -ctypes.get_errno()
def refused(value):
    assert value == -errno.EPERM, f"got {value}, not EPERM"
def outcome(action):
    try:
        action()
        return "done"
    except OSError as error:
        return error.strerror or str(error)
def errno_of(action):
    try:
        action()
        return 0
    except OSError as error:
        return error.errno
"#;

fn attacks() -> Vec<Attack> {
    let yes = || Returns(serde_json::json!(true));
    vec![
        // --- other processes: the server, init, the zygote, other executions
        attack("prlimit on the server's pid", "refused(sys_call(NR_prlimit64, SERVER, 7, ctypes.create_string_buffer(16), 0))", Refuses("prlimit64")),
        attack("resource.prlimit lowering the server's open files", "result = errno_of(lambda: resource.prlimit(SERVER, resource.RLIMIT_NOFILE, (8, 8)))\n    assert result == errno.EPERM, result", Refuses("prlimit64")),
        attack("resource.prlimit on pid 1 (itself in its own pid namespace)", "resource.prlimit(1, resource.RLIMIT_NOFILE, (32, 32))\n    result = os.getpid()", Returns(serde_json::json!(1))),
        attack("its own limits, read", "result = resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= 64", yes()),
        attack("kill the parent", "os.kill(os.getppid(), signal.SIGKILL)\n    result = os.getppid()", Returns(serde_json::json!(0))),
        attack("kill every process", "assert errno_of(lambda: os.kill(-1, signal.SIGKILL)) == errno.EPERM", Refuses("kill")),
        attack("kill the server", "assert errno_of(lambda: os.kill(SERVER, signal.SIGKILL)) == errno.EPERM", Refuses("kill")),
        attack("probe every pid with signal 0", "assert sum(1 for pid in range(2, 4096) if sys_call(NR_kill, pid, 0) != -errno.EPERM) == 0", Refuses("kill")),
        attack("tgkill the server", "refused(sys_call(NR_tgkill, SERVER, SERVER, 9))", Refuses("tgkill")),
        attack("tkill a thread of the server", "refused(sys_call(NR_tkill, SERVER, 9))", Refuses("tkill")),
        attack("rt_sigqueueinfo to the server", "refused(sys_call(NR_rt_sigqueueinfo, SERVER, 9, ctypes.create_string_buffer(128)))", Refuses("rt_sigqueueinfo")),
        attack("pidfd_open on the server", "refused(sys_call(NR_pidfd_open, SERVER, 0))", Refuses("pidfd_open")),
        attack("ptrace attach to the server", "refused(sys_call(NR_ptrace, 16, SERVER, 0, 0))", Refuses("ptrace")),
        attack("process_vm_readv of the server", "refused(sys_call(NR_process_vm_readv, SERVER, 0, 0, 0, 0, 0))", Refuses("process_vm_readv")),
        attack("kcmp with the server", "refused(sys_call(NR_kcmp, SERVER, os.getpid(), 0, 0, 0))", Refuses("kcmp")),
        attack("the pid namespace: pid and parent", "result = [os.getpid(), os.getppid()]", Returns(serde_json::json!([1, 0]))),
        attack("no /proc to walk", "result = [os.path.exists(path) for path in ('/proc', '/proc/self', f'/proc/{SERVER}/environ', '/proc/1/root')]", Returns(serde_json::json!([false, false, false, false]))),
        attack("no /sys (cgroup release agents, kernel knobs)", "result = [os.path.exists(path) for path in ('/sys', '/sys/fs/cgroup', '/sys/kernel')]", Returns(serde_json::json!([false, false, false]))),
        attack("os.fork", "assert errno_of(os.fork) == errno.EPERM", Refuses("clone")),
        attack("a fork bomb", "while True:\n        os.fork()", Fails(&["PermissionError: [Errno 1] Operation not permitted\n(flowgate's sandbox refused the system call clone"])),
        attack("subprocess", "import subprocess\n    subprocess.run(['/bin/sh', '-c', 'id'])", Fails(&["flowgate's sandbox refused the system call", "No such file"])),
        attack("os.system", "result = os.system('id') != 0", yes()),
        attack("os.posix_spawn", "assert errno_of(lambda: os.posix_spawn('/bin/sh', ['sh'], {})) == errno.EPERM", Refuses("clone")),
        attack("raw clone of a process", "refused(sys_call(NR_clone, 17, 0, 0, 0, 0))", Refuses("clone")),
        attack("clone3 (the C library falls back to clone)", "result = sys_call(NR_clone3, 0, 0) == -errno.ENOSYS", yes()),
        attack("vfork", "refused(sys_call(NR_vfork))", Refuses("vfork")),
        attack("execve", "refused(sys_call(NR_execve, ctypes.c_char_p(b'/bin/sh'), 0, 0))", Refuses("execve")),
        attack("execveat", "refused(sys_call(NR_execveat, -100, ctypes.c_char_p(b'/bin/sh'), 0, 0, 0))", Refuses("execveat")),
        attack("os.execv", "os.execv('/bin/sh', ['sh'])", Fails(&["flowgate's sandbox refused the system call execve"])),
        attack("a higher scheduling priority", "refused(sys_call(NR_setpriority, 0, 0, -20))", Refuses("setpriority")),
        attack("pinning to a core", "refused(sys_call(NR_sched_setaffinity, 0, 8, ctypes.create_string_buffer(8)))", Refuses("sched_setaffinity")),
        attack("a thousand threads", "import threading\n    started = 0\n    stop = threading.Event()\n    try:\n        for _ in range(1000):\n            threading.Thread(target=stop.wait).start()\n            started += 1\n    except RuntimeError:\n        pass\n    stop.set()\n    result = 0 < started < 200", yes()),
        // --- identity and privileges
        attack("who it runs as", "result = [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()]", Returns(serde_json::json!([65534, 65534, 65534, 65534, []]))),
        attack("setuid(0)", "refused(sys_call(NR_setuid, 0))", Refuses("setuid")),
        attack("setresuid(0, 0, 0)", "refused(sys_call(NR_setresuid, 0, 0, 0))", Refuses("setresuid")),
        attack("capset: every capability back", "refused(sys_call(NR_capset, ctypes.create_string_buffer(struct.pack('<Ii', 0x20080522, 0)), ctypes.create_string_buffer(b'\\xff' * 24)))", Refuses("capset")),
        attack("no capabilities at all", "header = struct.pack('<Ii', 0x20080522, 0)\n    data = ctypes.create_string_buffer(24)\n    sys_call(NR_capget, ctypes.create_string_buffer(header), data)\n    result = data.raw == bytes(24)", yes()),
        attack("a new user namespace", "refused(sys_call(NR_unshare, 0x10000000))", Refuses("unshare")),
        attack("setns into the server's namespaces", "refused(sys_call(NR_setns, 3, 0))", Refuses("setns")),
        attack("mount a tmpfs", "refused(sys_call(NR_mount, ctypes.c_char_p(b'none'), ctypes.c_char_p(b'/tmp'), ctypes.c_char_p(b'tmpfs'), 0, 0))", Refuses("mount")),
        attack("unmount the read-only libraries", "refused(sys_call(NR_umount2, ctypes.c_char_p(os.path.dirname(os.__file__).encode()), 2))", Refuses("umount2")),
        attack("chroot", "refused(sys_call(NR_chroot, ctypes.c_char_p(b'/tmp')))", Refuses("chroot")),
        attack("pivot_root", "refused(sys_call(NR_pivot_root, ctypes.c_char_p(b'/tmp'), ctypes.c_char_p(b'/tmp')))", Refuses("pivot_root")),
        attack("the new mount API", "refused(sys_call(NR_fsopen, ctypes.c_char_p(b'tmpfs'), 0))\n    refused(sys_call(NR_open_tree, -100, ctypes.c_char_p(b'/'), 1))", Refuses("fsopen, open_tree")),
        attack("the user keyring (shared by every process of a uid)", "refused(sys_call(NR_add_key, ctypes.c_char_p(b'user'), ctypes.c_char_p(b'leak'), ctypes.c_char_p(b'secret'), 6, -4))", Refuses("add_key")),
        attack("keyctl read", "refused(sys_call(NR_keyctl, 11, -4, 0, 0))", Refuses("keyctl")),
        attack("prctl: dumpable again", "refused(sys_call(NR_prctl, 4, 1, 0, 0, 0))", Refuses("prctl")),
        attack("prctl: any process may trace it", "refused(sys_call(NR_prctl, 0x59616d61, -1, 0, 0, 0))", Refuses("prctl")),
        attack("personality", "refused(sys_call(NR_personality, 0x0400000))", Refuses("personality")),
        attack("a seccomp filter of its own", "refused(sys_call(NR_seccomp, 1, 0, 0))", Refuses("seccomp")),
        attack("bpf", "refused(sys_call(NR_bpf, 0, 0, 0))", Refuses("bpf")),
        attack("perf_event_open (timing other tenants)", "refused(sys_call(NR_perf_event_open, ctypes.create_string_buffer(128), -1, 0, -1, 0))", Refuses("perf_event_open")),
        attack("userfaultfd", "refused(sys_call(NR_userfaultfd, 0))", Refuses("userfaultfd")),
        attack("io_uring", "refused(sys_call(NR_io_uring_setup, 8, ctypes.create_string_buffer(120)))", Refuses("io_uring_setup")),
        attack("kernel modules", "refused(sys_call(NR_init_module, 0, 0, 0))\n    refused(sys_call(NR_finit_module, 0, 0, 0))", Refuses("init_module, finit_module")),
        attack("kexec", "refused(sys_call(NR_kexec_load, 0, 0, 0, 0))", Refuses("kexec_load")),
        attack("reboot", "refused(sys_call(NR_reboot, 0xfee1dead, 672274793, 0x1234567, 0))", Refuses("reboot")),
        attack("the kernel log", "refused(sys_call(NR_syslog, 3, ctypes.create_string_buffer(4096), 4096))", Refuses("syslog")),
        attack("swapon", "refused(sys_call(NR_swapon, ctypes.c_char_p(b'/tmp/x'), 0))", Refuses("swapon")),
        attack("process accounting", "refused(sys_call(NR_acct, ctypes.c_char_p(b'/tmp/x')))", Refuses("acct")),
        attack("open_by_handle_at (the shocker escape)", "refused(sys_call(NR_open_by_handle_at, -100, ctypes.create_string_buffer(128), 0))", Refuses("open_by_handle_at")),
        attack("mknod a disk", "refused(sys_call(NR_mknodat, -100, ctypes.c_char_p(b'/tmp/disk'), 0o60600, 0x800))", Refuses("mknodat")),
        attack("the clock", "refused(sys_call(NR_clock_settime, 0, ctypes.create_string_buffer(16)))", Refuses("clock_settime")),
        attack("the host name", "refused(sys_call(NR_sethostname, ctypes.c_char_p(b'owned'), 5))", Refuses("sethostname")),
        attack("terminal input injection", "refused(sys_call(NR_ioctl, 0, 0x5412, ctypes.c_char_p(b'x')))", Refuses("ioctl")),
        attack("inotify on shared folders", "refused(sys_call(NR_inotify_init1, 0))", Refuses("inotify_init1")),
        // --- IPC between executions and apps
        attack("System V shared memory", "refused(sys_call(NR_shmget, 0x1234, 4096, 0o1666))", Refuses("shmget")),
        attack("System V message queues", "refused(sys_call(NR_msgget, 0x1234, 0o1666))", Refuses("msgget")),
        attack("System V semaphores", "refused(sys_call(NR_semget, 0x1234, 1, 0o1666))", Refuses("semget")),
        attack("POSIX message queues", "refused(sys_call(NR_mq_open, ctypes.c_char_p(b'leak'), 0o100, 0o666, 0))", Refuses("mq_open")),
        attack("/dev/shm", "result = outcome(lambda: open('/dev/shm/leak', 'w'))", Returns(serde_json::json!("No such file or directory"))),
        attack("an abstract unix socket", "assert errno_of(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).bind('\\0flowgate-leak')) == errno.EPERM", Refuses("socket")),
        attack("a TCP connection to the server", "assert errno_of(lambda: socket.create_connection(('127.0.0.1', 5001), timeout=1)) == errno.EPERM", Refuses("socket")),
        attack("raw netlink", "refused(sys_call(NR_socket, 16, 3, 0))", Refuses("socket")),
        attack("a socketpair inside itself still works", "import asyncio\n    async def tick():\n        await asyncio.sleep(0)\n        return 'ticked'\n    result = asyncio.run(tick())", Returns(serde_json::json!("ticked"))),
        // --- files
        attack("/etc/shadow and /etc/passwd", "result = [os.path.exists('/etc/shadow'), os.path.exists('/etc/passwd')]", Returns(serde_json::json!([false, false]))),
        attack("Debian's sitecustomize under /etc", "result = [os.path.exists(path) for path in ('/etc/python3.11', '/etc/python3', '/etc/python3.11/sitecustomize.py')]", Returns(serde_json::json!([false, false, false]))),
        attack("root's home", "result = [os.path.exists(path) for path in ('/root/.bashrc', '/root/.ssh', '/root/.cargo')]", Returns(serde_json::json!([false, false, false]))),
        attack("the repository's files", "result = os.path.exists(MANIFEST)", Returns(serde_json::json!(false))),
        attack("list the root", "result = outcome(lambda: os.listdir('/'))", Returns(serde_json::json!("Permission denied"))),
        attack("list /etc", "result = outcome(lambda: os.listdir('/etc'))", Returns(serde_json::json!("Permission denied"))),
        attack("devices", "result = [os.path.exists(path) for path in ('/dev/mem', '/dev/kmsg', '/dev/sda', '/dev/vda', '/dev/tty', '/dev/null', '/dev/urandom')]", Returns(serde_json::json!([false, false, false, false, false, true, true]))),
        attack("poison the standard library", "import json\n    result = outcome(lambda: open(json.__file__, 'a').write('raise SystemExit')) in ('Read-only file system', 'Permission denied')", yes()),
        attack("a module next to the standard library", "result = outcome(lambda: open(os.path.join(os.path.dirname(os.__file__), 'evil.py'), 'w')) in ('Read-only file system', 'Permission denied')", yes()),
        attack("the site-packages of the interpreter", "import site, sysconfig
    result = outcome(lambda: open(os.path.join(sysconfig.get_paths()['purelib'], 'evil.pth'), 'w')) in ('Read-only file system', 'Permission denied', 'No such file or directory')", yes()),
        attack("a hard link of the standard library", "result = outcome(lambda: os.link(os.__file__, '/tmp/os.py'))", Returns(serde_json::json!("Invalid cross-device link"))),
        attack("a symlink out of the scratch folder", "os.symlink('/etc/shadow', '/tmp/shadow')\n    result = outcome(lambda: open('/tmp/shadow').read())", Returns(serde_json::json!("No such file or directory"))),
        attack("a library written to scratch and loaded", "import _ctypes\n    open('/tmp/lib.so', 'wb').write(open(_ctypes.__file__, 'rb').read())\n    result = 'failed to map segment' in outcome(lambda: ctypes.CDLL('/tmp/lib.so'))", yes()),
        attack("fill the disk", "chunk = b'x' * (1 << 20)\n    written = 0\n    try:\n        with open('/tmp/fill', 'wb') as f:\n            for _ in range(1024):\n                f.write(chunk)\n                written += 1\n    except OSError:\n        pass\n    result = written < 1024", yes()),
        attack("many files in scratch", "count = 0\n    try:\n        for n in range(20000):\n            open(f'/tmp/f{n}', 'w').close()\n            count += 1\n    except OSError:\n        pass\n    result = count > 0", yes()),
        attack("descriptors of the zygote", "import stat\n    found = []\n    for fd in range(3, 1024):\n        try:\n            found.append(stat.S_IFMT(os.fstat(fd).st_mode) == stat.S_IFIFO)\n        except OSError:\n            pass\n    result = found", Returns(serde_json::json!([true]))),
        attack("the environment", "result = [sorted(os.environ), os.getcwd(), os.environ['HOME']]", Returns(serde_json::json!([["HOME", "LANG", "PATH", "TMPDIR"], "/tmp", "/tmp"]))),
        // --- its own limits and the zygote's protocol
        attack("a memory bomb", "blocks = []\n    while True:\n        blocks.append(bytes(256 * 1024 * 1024))", Fails(&["ran out of memory (limit 768 MiB)"])),
        attack("a lowered memory limit, reported as it is", "resource.setrlimit(resource.RLIMIT_AS, (200 * 1024 * 1024, 200 * 1024 * 1024))\n    data = bytearray(300 * 1024 * 1024)", Fails(&["ran out of memory (limit 200 MiB)"])),
        attack("an endless loop", "while True:\n        pass", Fails(&["timed out after 3 s"])),
        attack("sleeping past the deadline", "time.sleep(60)", Fails(&["timed out after 3 s"])),
        attack("its CPU limit lowered and spent", "resource.setrlimit(resource.RLIMIT_CPU, (1, 1))\n    while True:\n        pass", Fails(&["more CPU time than its limit"])),
        attack("the result pipe closed, then sleep", "for fd in range(3, 64):\n        try:\n            os.close(fd)\n        except OSError:\n            pass\n    time.sleep(60)", Fails(&["closed the sandbox's result pipe"])),
        attack("a fake result, then sleep", "for fd in range(3, 64):\n        try:\n            os.write(fd, b'R{\"result\": \"fake\"}')\n            os.close(fd)\n        except OSError:\n            pass\n    time.sleep(60)", Returns(serde_json::json!("fake"))),
        attack("garbage before the result", "for fd in range(3, 64):\n        try:\n            os.write(fd, b'\\xff\\x00garbage')\n        except OSError:\n            pass\n    result = 1", Fails(&["Failed to parse JSON", "without a result", "exited"])),
        attack("a giant output", "result = 'a' * (80 * 1024 * 1024)", Fails(&["larger than 64 MiB"])),
        attack("a result nested 200,000 deep", "result = []\n    for _ in range(200000):\n        result = [result]", Fails(&["ValueError: Depth limit 5 reached, object too deep."])),
        attack("deep recursion", "def f(n):\n        return f(n + 1)\n    result = f(0)", Fails(&["RecursionError: maximum recursion depth exceeded"])),
        attack("recursion past the C stack", "sys.setrecursionlimit(10 ** 7)\n    def f(n):\n        return f(n + 1)\n    result = f(0)", Fails(&["segmentation fault", "RecursionError", "MemoryError", "ran out of memory", "timed out after 3 s"])),
        attack("SystemExit", "raise SystemExit(3)", Fails(&["SystemExit: 3"])),
        attack("signals to itself still work", "signal.signal(signal.SIGUSR1, lambda *a: None)\n    signal.raise_signal(signal.SIGUSR1)\n    result = 'ok'", Returns(serde_json::json!("ok"))),
        #[cfg(target_arch = "x86_64")]
        attack("a 32-bit system call (int 0x80)", "import mmap\n    code = bytes([0xb8, 0x14, 0, 0, 0, 0xcd, 0x80, 0xc3])\n    memory = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n    memory.write(code)\n    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))\n    ctypes.CFUNCTYPE(ctypes.c_int)(address)()\n    result = 'survived'", Fails(&["foreign ABI"])),
        #[cfg(target_arch = "x86_64")]
        attack("an x32 system call", "result = sys_call(0x40000000 | 39)", Fails(&["foreign ABI"])),
    ]
}

/// `NR_name` replaced by the call's number on this architecture.
fn with_numbers(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("NR_") {
        out.push_str(&rest[..at]);
        let name: String = rest[at + 3..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let number = seccomp::number_of(&name).unwrap_or_else(|| panic!("no system call {name} here"));
        out.push_str(&number.to_string());
        rest = &rest[at + 3 + name.len()..];
    }
    out.push_str(rest);
    out
}

fn program(body: &str, refuses: bool) -> String {
    let prelude = format!("{PRELUDE}\nSERVER = {}\nMANIFEST = {:?}\n", std::process::id(), env!("CARGO_MANIFEST_PATH"));
    // An attack that expects a refusal fails at its end, so the sandbox's note on it shows.
    let end = if refuses { "raise RuntimeError('the attack is over')" } else { "return {'result': result}" };
    with_numbers(&format!("{prelude}\ndef main():\n    result = None\n    {body}\n    {end}\n"))
}

fn judge(attack: &Attack, outcome: &Result<Map, (PortErrorKind, String)>) -> Result<(), String> {
    match (&attack.verdict, outcome) {
        (Returns(expected), Ok(outputs)) => {
            let got = outputs.get("result");
            if got == Some(&Value::from(expected)) { Ok(()) } else { Err(format!("returned {got:?}, expected {expected}")) }
        }
        (Returns(expected), Err((_, message))) => Err(format!("failed ({message}), expected it to return {expected}")),
        (Fails(needles), Err((_, message))) => {
            if needles.iter().any(|needle| message.contains(needle)) {
                Ok(())
            } else {
                Err(format!("failed with {message:?}, expected one of {needles:?}"))
            }
        }
        (Fails(needles), Ok(outputs)) => Err(format!("succeeded with {outputs:?}, expected a failure with one of {needles:?}")),
        (Refuses(calls), Err((_, message))) => {
            let noted = message.contains("RuntimeError: the attack is over")
                && calls.split(", ").all(|call| {
                    message.contains(&format!("refused the system call {call}"))
                        || message.contains("refused the system calls") && message.contains(call)
                });
            if noted { Ok(()) } else { Err(format!("failed with {message:?}, expected EPERM and the refusal of {calls} noted")) }
        }
        (Refuses(calls), Ok(outputs)) => Err(format!("returned {outputs:?}, expected the refusal of {calls}")),
    }
}

async fn escape_suite(python: std::path::PathBuf, tag: &str) {
    let mut config = config(tag);
    config.python = python;
    config.workers = 2;
    config.timeout = Duration::from_secs(3);
    let sandbox = Sandbox::start(config).await.unwrap();
    let protections = sandbox.protections().clone();
    assert!(protections.missing().is_empty(), "{}", protections.describe());
    let zygotes = sandbox.zygote_pids().await;
    let server_limits = limits_of(std::process::id());
    let init_limits = limits_of(1);
    let mut failures = Vec::new();
    let attacks = attacks();
    for attack in &attacks {
        let started = Instant::now();
        let outcome = sandbox
            .execute(call_as("hostile-app", "python3", &program(attack.body, matches!(attack.verdict, Refuses(_))), &[]))
            .await
            .map_err(|error| (error.kind, error.message));
        if let Err(problem) = judge(attack, &outcome) {
            failures.push(format!("{}: {problem}", attack.name));
        }
        if started.elapsed() > Duration::from_secs(5) {
            failures.push(format!("{}: took {:?} (the deadline is 3 s)", attack.name, started.elapsed()));
        }
        still_healthy(&sandbox).await;
        if limits_of(std::process::id()) != server_limits {
            failures.push(format!("{}: changed the server's limits", attack.name));
        }
        if limits_of(1) != init_limits {
            failures.push(format!("{}: changed the limits of the host's pid 1", attack.name));
        }
        let now = sandbox.zygote_pids().await;
        if !zygotes.iter().all(|pid| now.contains(pid)) {
            failures.push(format!("{}: a zygote died ({zygotes:?} -> {now:?})", attack.name));
        }
        // Each zygote keeps two children ready; anything more is left of the attack (a child
        // just answered is reaped a moment after its answer).
        let mut left = children_of(&now);
        for _ in 0..50 {
            if left.len() <= now.len() * SPARES {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = children_of(&now);
        }
        if left.len() > now.len() * SPARES {
            failures.push(format!("{}: processes left behind: {left:?}", attack.name));
        }
    }
    assert!(attacks.len() >= 60, "{} attacks", attacks.len());
    assert!(failures.is_empty(), "{} of {} attacks were not refused or stopped:\n{}", failures.len(), attacks.len(), failures.join("\n"));
}

#[tokio::test]
async fn attacks_fail_with_a_root_only_pyenv() {
    escape_suite(common::root_only_python(), "attacks-root-only").await;
}

#[tokio::test]
async fn attacks_fail_with_the_system_python() {
    escape_suite(common::system_python(), "attacks-system").await;
}

#[tokio::test]
async fn attacks_fail_with_a_virtualenv_in_a_private_folder() {
    escape_suite(common::private_virtualenv(), "attacks-venv").await;
}

/// Code of one app, running, cannot change what another app's concurrent execution may do or
/// see: its threads, memory, files and limits are its own.
#[tokio::test]
async fn concurrent_executions_of_two_apps_do_not_touch_each_other() {
    for layout in layouts() {
        let mut config = config(&format!("tenants-{}", layout.name.replace(' ', "-")));
        config.python = layout.python.clone();
        config.workers = 2;
        config.timeout = Duration::from_secs(10);
        let sandbox = Sandbox::start(config).await.unwrap();
        let holder = "import os, resource, threading, time\ndef main():\n    threading.stack_size(256 * 1024)\n    stop = threading.Event()\n    for _ in range(100):\n        threading.Thread(target=stop.wait, daemon=True).start()\n    open('/tmp/secret', 'w').write('app A')\n    resource.setrlimit(resource.RLIMIT_AS, (100 * 1024 * 1024, 100 * 1024 * 1024))\n    time.sleep(1.5)\n    stop.set()\n    return {'result': 'held'}";
        let other = "import os, threading, time\ndef main():\n    time.sleep(0.4)\n    threading.stack_size(256 * 1024)\n    stop = threading.Event()\n    for _ in range(100):\n        threading.Thread(target=stop.wait, daemon=True).start()\n    stop.set()\n    data = bytearray(400 * 1024 * 1024)\n    return {'result': ['secret' in os.listdir('/tmp'), len(data) // (1024 * 1024)]}";
        let (held, seen) = tokio::join!(
            sandbox.execute(call_as("app-a", "python3", holder, &[])),
            sandbox.execute(call_as("app-b", "python3", other, &[]))
        );
        assert_eq!(held.unwrap().get("result"), Some(&Value::str("held")), "{}", layout.name);
        let seen =
            seen.unwrap_or_else(|error| panic!("{}: app B failed while app A held threads and lowered its limits: {error:?}", layout.name));
        assert_eq!(seen.get("result"), Some(&Value::array(vec![Value::Bool(false), Value::Int(400)])), "{}", layout.name);
    }
}

/// While code runs, the host sees it as nobody, in a pid namespace of its own.
#[tokio::test]
async fn running_code_is_nobody_on_the_host() {
    for layout in layouts() {
        let mut config = config(&format!("host-view-{}", layout.name.replace(' ', "-")));
        config.python = layout.python.clone();
        config.workers = 1;
        let sandbox = Sandbox::start(config).await.unwrap();
        let zygotes = sandbox.zygote_pids().await;
        let running = tokio::spawn({
            let sandbox = sandbox.clone();
            async move {
                sandbox
                    .execute(call_as("app", "python3", "import time\ndef main():\n    time.sleep(1)\n    return {'result': 1}", &[]))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let children = children_of(&zygotes);
        assert!(!children.is_empty(), "{}: no child of {zygotes:?}", layout.name);
        for child in &children {
            assert_eq!(uids_of(*child), "65534 65534 65534 65534", "{}: child {child}", layout.name);
            let own = std::fs::read_link(format!("/proc/{child}/ns/pid")).unwrap();
            let ours = std::fs::read_link("/proc/self/ns/pid").unwrap();
            assert_ne!(own, ours, "{}: the child shares the server's pid namespace", layout.name);
        }
        running.await.unwrap().unwrap();
    }
}

/// Two executions in a row, the first leaving what it can for the second: nothing arrives.
#[tokio::test]
async fn nothing_an_execution_leaves_reaches_the_next() {
    let mut config = config("leftovers");
    config.workers = 1;
    let sandbox = Sandbox::start(config).await.unwrap();
    let leave = "import os, json, sys\nSTATE = []\ndef main():\n    open('/tmp/left', 'w').write('secret')\n    os.environ['LEFT'] = 'secret'\n    json.left = 'secret'\n    sys.modules['left'] = json\n    STATE.append(1)\n    return {'result': len(STATE)}";
    let find = "import os, json, sys\ndef main():\n    return {'result': ['left' in os.listdir('/tmp'), 'LEFT' in os.environ, hasattr(json, 'left'), 'left' in sys.modules]}";
    for _ in 0..3 {
        assert_eq!(common::output(&sandbox, leave).await, Value::Int(1));
        assert_eq!(
            common::output(&sandbox, find).await,
            Value::array(vec![Value::Bool(false), Value::Bool(false), Value::Bool(false), Value::Bool(false)])
        );
    }
}

/// Every execution's files live in a tmpfs of its own: nothing is left on the host's disk, and
/// a folder name cannot collide with one a previous process left (pid reuse in containers).
#[tokio::test]
async fn scratch_files_never_reach_the_hosts_disk() {
    let config = config("no-leftovers");
    let scratch = config.scratch.clone();
    let sandbox = Sandbox::start(config).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            common::output(&sandbox, "def main():\n    open('/tmp/big', 'w').write('x' * 1000)\n    return {'result': 1}").await,
            Value::Int(1)
        );
    }
    let left: Vec<_> =
        std::fs::read_dir(&scratch).map(|entries| entries.filter_map(Result::ok).map(|entry| entry.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", scratch.display());
    drop(sandbox);
    assert!(!scratch.exists(), "{} outlives the sandbox", scratch.display());
}
