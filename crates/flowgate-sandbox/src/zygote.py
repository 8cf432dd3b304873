"""flowgate's Python zygote: a warm interpreter that forks one locked-down child per execution.

The server starts it with an empty environment and talks to it over stdin/stdout in frames (a
4-byte big-endian length, then the bytes). The first frame (JSON) configures it; it answers with
the protections this kernel offers. Then each request is three frames: its limits (JSON), the
code of a code node (empty for a whole program) and the rest of the request (JSON). The zygote
reads only the first two and hands the last two, unparsed, to a fresh child. Each answer is two
frames: what happened (JSON) and the child's text (its JSON result, its program's report or its
traceback). The child for the next request is forked and locked down while the zygote waits for
it, so neither cost falls on the request. The zygote itself never runs user code, so no
execution can see another's data.

Every page the zygote or a child writes after a fork costs a page fault, and on this path faults
are most of the time an execution takes; so what can be prepared once (the environment, the
seccomp programs, the landlock rules, compiled code) is prepared in the zygote, and the zygote
does not parse what it only passes on.

In the child, before user code: a new session, stdio to /dev/null, a private scratch directory,
rlimits, root's privileges dropped, no_new_privs, a landlock ruleset (read-only system and Python
paths, the scratch directory read-write) and a seccomp filter (no sockets unless allowed, no
exec, no new processes, no ptrace, no mount, signals only to itself).
"""

import ctypes
import gc
import json
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback

# What Dify's sandbox offers, imported once (in `main`) so children start warm.
PRELOAD = [
    "base64", "binascii", "bisect", "calendar", "collections", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "enum", "fractions", "functools", "hashlib", "heapq", "hmac", "html", "io",
    "itertools", "json", "math", "operator", "random", "re", "statistics", "string", "textwrap", "time",
    "typing", "unicodedata", "urllib.parse", "uuid", "zoneinfo", "jinja2",
]
# HTTP clients only help code that may open sockets; they add ~9 MiB to every fork otherwise.
PRELOAD_WITH_NETWORK = ["requests", "httpx"]


def preload(names):
    for name in names:
        try:
            __import__(name)
        except Exception:  # not installed here: user code importing it gets ImportError
            pass


def preload_configured(names):
    """The operator's extra modules (`--code-preload`); what fails to import is reported."""
    failures = []
    for name in names:
        try:
            __import__(name)
        except BaseException as error:  # noqa: BLE001 - any failure is the operator's to see
            failures.append(f"{name}: {type(error).__name__}: {error}")
    return failures

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
LIBC.prctl.restype = ctypes.c_int
NOBODY = 65534
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_GET_SECCOMP = 21
SECCOMP_MODE_FILTER = 2
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
SYS_CAPSET = 126
MAX_RESULT_BYTES = 64 * 1024 * 1024


def read_exact(fd, size):
    data = os.read(fd, size)
    if len(data) == size:
        return data
    parts = [data]
    while size > len(data):
        if not data:
            raise EOFError
        size -= len(data)
        data = os.read(fd, size)
        parts.append(data)
    return b"".join(parts)


def read_frame(fd=0):
    """A frame's bytes, without its length."""
    return read_exact(fd, struct.unpack(">I", read_exact(fd, 4))[0])


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def frame(data):
    return struct.pack(">I", len(data)) + data


def write_json_frame(value):
    write_all(1, frame(json.dumps(value).encode("utf-8")))


def write_answer(outcome, text=b""):
    write_all(1, frame(json.dumps(outcome).encode("utf-8")) + struct.pack(">I", len(text)))
    if text:
        write_all(1, text)


# --- seccomp --------------------------------------------------------------------------------

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
# x86_64 numbers. Refused with EPERM (or ENOSYS for clone3, so the C library falls back to clone).
DENIED = {
    "execve": 59, "execveat": 322, "fork": 57, "vfork": 58, "ptrace": 101, "process_vm_readv": 310,
    "process_vm_writev": 311, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272,
    "setns": 308, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
    "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168, "syslog": 103, "bpf": 321,
    "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248, "request_key": 249,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "setuid": 105, "setgid": 106,
    "setreuid": 113, "setregid": 114, "setresuid": 117, "setresgid": 119, "setgroups": 116, "setfsuid": 122,
    "setfsgid": 123, "capset": 126, "personality": 135, "acct": 163, "quotactl": 179, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "mknod": 133, "mknodat": 259, "iopl": 172, "ioperm": 173, "settimeofday": 164,
    "clock_settime": 227, "adjtimex": 159, "sethostname": 170, "setdomainname": 171, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438, "rt_sigqueueinfo": 129,
    "rt_tgsigqueueinfo": 297,
}
NETWORK = {"socket": 41, "connect": 42, "accept": 43, "bind": 49, "listen": 50, "accept4": 288}
SYS_CLONE, SYS_CLONE3, SYS_KILL, SYS_TKILL, SYS_TGKILL = 56, 435, 62, 200, 234
CLONE_THREAD = 0x00010000
EPERM, ENOSYS = 1, 38

BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JSET_K = 0x45
BPF_JGE_K = 0x35
BPF_RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000


PID_PLACEHOLDER = 0


def seccomp_program(network):
    """A classic BPF filter over seccomp_data (nr at 0, arch at 4, args[i] at 16 + 8 * i), and
    the offsets of the instructions that compare with this process's pid (filled in after fork)."""
    program, pid_slots = [], []

    def op(code, k, jt=0, jf=0):
        program.append((code, jt, jf, k))

    op(BPF_LD_W_ABS, 4)
    op(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0)
    op(BPF_RET_K, RET_KILL_PROCESS)
    op(BPF_LD_W_ABS, 0)
    op(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1)
    op(BPF_RET_K, RET_ERRNO | EPERM)
    denied = list(DENIED.values()) + ([] if network else list(NETWORK.values()))
    for number in denied:
        op(BPF_JEQ_K, number, 0, 1)
        op(BPF_RET_K, RET_ERRNO | EPERM)
    op(BPF_JEQ_K, SYS_CLONE3, 0, 1)
    op(BPF_RET_K, RET_ERRNO | ENOSYS)
    # clone: threads only.
    op(BPF_JEQ_K, SYS_CLONE, 0, 4)
    op(BPF_LD_W_ABS, 16)
    op(BPF_JSET_K, CLONE_THREAD, 1, 0)
    op(BPF_RET_K, RET_ERRNO | EPERM)
    op(BPF_RET_K, RET_ALLOW)
    # kill(pid) and tgkill(tgid): this process (or its own group) only; tkill: itself only.
    for number, zero_ok in ((SYS_KILL, True), (SYS_TGKILL, False), (SYS_TKILL, False)):
        op(BPF_JEQ_K, number, 0, 5 if zero_ok else 4)
        op(BPF_LD_W_ABS, 16)
        pid_slots.append(len(program) * 8 + 4)
        op(BPF_JEQ_K, PID_PLACEHOLDER, 2 if zero_ok else 1, 0)
        if zero_ok:
            op(BPF_JEQ_K, 0, 1, 0)
        op(BPF_RET_K, RET_ERRNO | EPERM)
        op(BPF_RET_K, RET_ALLOW)
    op(BPF_RET_K, RET_ALLOW)
    return b"".join(struct.pack("<HBBI", *instruction) for instruction in program), pid_slots




class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def prepared_seccomp(network):
    program, pid_slots = seccomp_program(network)
    buffer = ctypes.create_string_buffer(program, len(program))
    return buffer, pid_slots, SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))


# Assembled once; a child only writes its pid into its own copy.
SECCOMP_PROGRAMS = {network: prepared_seccomp(network) for network in (False, True)}


def install_seccomp(network):
    buffer, pid_slots, fprog = SECCOMP_PROGRAMS[network]
    pid = os.getpid()
    for offset in pid_slots:
        struct.pack_into("<I", buffer, offset, pid)
    if LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp filter refused")


def seccomp_available():
    import platform

    return platform.machine() == "x86_64" and LIBC.prctl(PR_GET_SECCOMP, 0, 0, 0, 0) >= 0


# --- landlock -------------------------------------------------------------------------------

FS_FILE = (1 << 0) | (1 << 1) | (1 << 2)  # execute, write file, read file
FS_READ = (1 << 2) | (1 << 3)  # read file, read dir


def landlock_abi():
    abi = LIBC.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return abi if abi > 0 else 0


def handled_fs(abi):
    handled = (1 << 13) - 1
    if abi >= 2:
        handled |= 1 << 13  # refer
    if abi >= 3:
        handled |= 1 << 14  # truncate
    if abi >= 5:
        handled |= 1 << 15  # ioctl on devices
    return handled


class Landlock:
    """The rules every child gets, prepared once: a packed rule per read path, whose O_PATH
    descriptor stays open in the zygote (a child closes it before user code runs). Only the
    child's own scratch directory is added per child, in the zygote before the fork."""

    def __init__(self, abi, read_paths):
        self.handled = handled_fs(abi)
        file_rights = FS_FILE | (1 << 14) | (1 << 15)
        self.attributes = {}
        for network in (False, True):
            fields = [self.handled]
            if abi >= 4:
                fields.append(0 if network else 0b11)  # bind and connect TCP: refused when no network
            if abi >= 6:
                fields.append(0b11)  # abstract unix sockets and signals outside this sandbox
            self.attributes[network] = struct.pack("<" + "Q" * len(fields), *fields)
        self.rules = []
        for paths, access in ((read_paths, FS_READ), (["/dev/null"], self.handled)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue
                allowed = access if os.path.isdir(path) else access & file_rights & self.handled
                self.rules.append((path, struct.pack("<Qi", allowed, fd)))

    def ruleset(self, scratch, network):
        """A new ruleset descriptor: the prepared rules and `scratch` read-write."""
        attributes = self.attributes[network]
        ruleset = LIBC.syscall(SYS_LANDLOCK_CREATE_RULESET, attributes, ctypes.c_size_t(len(attributes)), ctypes.c_uint32(0))
        if ruleset < 0:
            raise OSError(ctypes.get_errno(), "landlock ruleset refused")
        try:
            for path, rule in self.rules:
                if LIBC.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, 1, rule, 0) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock rule for {path} refused")
            fd = os.open(scratch, os.O_PATH | os.O_CLOEXEC)
            try:
                if LIBC.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, 1, struct.pack("<Qi", self.handled, fd), 0) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock rule for {scratch} refused")
            finally:
                os.close(fd)
        except BaseException:
            os.close(ruleset)
            raise
        return ruleset


def restrict_to(ruleset):
    if LIBC.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
        raise OSError(ctypes.get_errno(), "landlock restrict_self refused")
    os.close(ruleset)


def python_paths():
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(entry for entry in sys.path if entry)
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file:
            paths.add(os.path.dirname(os.path.dirname(os.path.realpath(file))))
    return sorted(path for path in paths if os.path.exists(path))


SYSTEM_READ_PATHS = [
    "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share/zoneinfo", "/etc/localtime", "/etc/ld.so.cache",
    "/dev/urandom", "/dev/random",
]


# --- privileges -----------------------------------------------------------------------------


def readable_by_nobody(path):
    """Whether a process without root could still import from `path`."""
    path = os.path.realpath(path)
    while True:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return False
        if not mode & 0o001:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def privilege_plan():
    """Root becomes nobody when the interpreter stays readable; otherwise it keeps uid 0 and
    loses every capability (so file permissions bind it as they bind any user)."""
    if os.geteuid() != 0:
        return "not root"
    if all(readable_by_nobody(path) for path in (sys.prefix, os.path.dirname(os.__file__))):
        return "uid 65534"
    return "capabilities"


def drop_privileges(plan, scratch):
    if plan == "uid 65534":
        os.chown(scratch, NOBODY, NOBODY)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    elif plan == "capabilities":
        # Emptying every set is enough: exec is refused, so no capability can come back.
        header = CapHeader(0x20080522, 0)
        data = (CapData * 2)()
        if LIBC.syscall(SYS_CAPSET, ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "dropping capabilities refused")


# --- one execution --------------------------------------------------------------------------


# The environment user code sees, set in the zygote once its modules are imported; a child adds
# HOME and TMPDIR (its scratch directory).
CHILD_ENVIRONMENT = {"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}
DEV_NULL = os.open("/dev/null", os.O_RDWR)


def lock_down(config, limits, scratch, ruleset, keep):
    os.setsid()
    for fd in (0, 1, 2):
        os.dup2(DEV_NULL, fd)
    # Nothing of the zygote's stays open but this child's pipes and landlock ruleset.
    low = 3
    for fd in sorted(fd for fd in keep if fd >= 0):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)
    os.chdir(scratch)
    os.environ["HOME"] = scratch
    os.environ["TMPDIR"] = scratch
    seconds = max(1, -(-limits["timeout_ms"] // 1000))
    rlimits = [
        (resource.RLIMIT_CPU, (seconds, seconds + 1)),
        (resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"])),
        (resource.RLIMIT_FSIZE, (config["max_file_bytes"], config["max_file_bytes"])),
        (resource.RLIMIT_NOFILE, (64, 64)),
        (resource.RLIMIT_CORE, (0, 0)),
        # Threads only (new processes are refused by seccomp); root's uid is exempt from it.
        (resource.RLIMIT_NPROC, (128, 128)),
    ]
    for kind, value in rlimits:
        resource.setrlimit(kind, value)
    drop_privileges(config["privileges"], scratch)
    if LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "no_new_privs refused")
    if ruleset >= 0:
        restrict_to(ruleset)
    if config["seccomp"]:
        install_seccomp(limits["network"])


def user_traceback(error):
    """The traceback from the user's code on (the zygote's own frame left out)."""
    trace = error.__traceback__
    if trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    return "".join(traceback.format_exception(type(error), error, trace)).rstrip("\n")


# Code nodes' code, compiled by the zygote after it first ran (so later children start with it),
# keyed by its exact UTF-8 text. Code objects are immutable; a child executes its own copy.
COMPILED = {}
COMPILED_MAX_SOURCE = 64 * 1024
COMPILED_MAX_ENTRIES = 64


def remember_compiled(source):
    """Compiles a code node's code in the zygote, which runs nothing of it. The size cap bounds
    what compiling untrusted text can cost; what does not compile is left to the child."""
    if not source or len(source) > COMPILED_MAX_SOURCE or source in COMPILED:
        return
    try:
        compiled = compile(source.decode("utf-8"), "<code>", "exec", dont_inherit=True)
    except BaseException:  # noqa: BLE001 - the child compiles it again and reports the error
        return
    while len(COMPILED) >= COMPILED_MAX_ENTRIES:
        del COMPILED[next(iter(COMPILED))]
    COMPILED[source] = compiled
    gc.freeze()


def child(config, limits, scratch, ruleset, request_fd, result_fd):
    """Locks down, then waits for its one request (the zygote forks it ahead of time)."""
    status = 0
    try:
        try:
            lock_down(config, limits, scratch, ruleset, (request_fd, result_fd, ruleset))
        except Exception as error:
            os.write(result_fd, b"S" + f"the sandbox could not be set up: {error}".encode("utf-8", "replace"))
            os._exit(3)
        try:
            source = read_frame(request_fd)
            request = json.loads(read_frame(request_fd))
        except EOFError:
            os._exit(0)
        os.close(request_fd)
        if request.get("mode") == "script":
            run_script(request, result_fd)
        inputs = request["inputs"]
        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        try:
            compiled = COMPILED.get(source)
            if compiled is None:
                compiled = compile(source.decode("utf-8"), "<code>", "exec", dont_inherit=True)
            exec(compiled, namespace)
            main = namespace.get("main")
            if not callable(main):
                raise NameError("name 'main' is not defined")
            output = main(**inputs)
            text = json.dumps(output, ensure_ascii=False)
            payload = b"R" + text.encode("utf-8", "surrogatepass")
        except MemoryError:
            payload = b"M"
        except BaseException as error:  # SystemExit and KeyboardInterrupt are user errors too
            payload = b"E" + user_traceback(error).encode("utf-8", "replace")
        write_all(result_fd, payload)
        # The zygote answers at end of file; tearing this process down can happen after.
        os.close(result_fd)
    except BaseException:
        status = 4
    os._exit(status)


class CappedText:
    """A stdout/stderr that keeps what is printed, up to the result cap."""

    def __init__(self):
        self.parts, self.size = [], 0

    def write(self, text):
        if self.size < MAX_RESULT_BYTES:
            self.parts.append(text)
            self.size += len(text)
        return len(text)

    def flush(self):
        pass

    def getvalue(self):
        return "".join(self.parts)


def run_script(request, result_fd):
    """dify-sandbox's protocol: run a whole program (Dify's wrapper prints the result between
    `<<RESULT>>` markers) and report what it printed and how it exited."""
    stdout, stderr = CappedText(), CappedText()
    sys.stdout, sys.stderr = stdout, stderr
    exit_code = 0
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        if request.get("preload"):
            exec(compile(request["preload"], "<preload>", "exec"), namespace)
        exec(compile(request["code"], "<code>", "exec"), namespace)
    except SystemExit as error:
        exit_code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
        if not isinstance(error.code, (int, type(None))):
            stderr.write(f"{error.code}\n")
    except MemoryError:
        stdout.parts, stderr.parts = [], ["MemoryError\n"]
        exit_code = 1
    except BaseException as error:
        stderr.write(user_traceback(error) + "\n")
        exit_code = 1
    text = json.dumps({"stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "exit_code": exit_code}, ensure_ascii=False)
    write_all(result_fd, b"P" + text.encode("utf-8", "surrogatepass"))
    os.close(result_fd)
    os._exit(0)


def remove_tree(path):
    try:
        os.rmdir(path)  # most code writes nothing
        return
    except OSError:
        pass
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            try:
                os.unlink(os.path.join(root, name))
            except OSError:
                pass
        for name in dirs:
            try:
                os.rmdir(os.path.join(root, name))
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def limits_of(request):
    return {"timeout_ms": request["timeout_ms"], "memory_bytes": request["memory_bytes"], "network": request["network"]}


class Waiting:
    """A child forked and locked down before its request arrives, so a request pays for
    neither; it has run nothing and sees nothing but its scratch directory."""

    def __init__(self, config, limits, landlock, counter):
        self.limits = limits
        # Whether the child is reaped or queued to be (`run`); otherwise `discard` ends it.
        self.collected = False
        self.scratch = os.path.join(config["scratch"], f"x{os.getpid()}-{counter}")
        os.mkdir(self.scratch, 0o700)
        ruleset = landlock.ruleset(self.scratch, limits["network"]) if landlock else -1
        request_read, self.request_fd = os.pipe()
        self.result_fd, result_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.request_fd)
            os.close(self.result_fd)
            child(config, limits, self.scratch, ruleset, request_read, result_write)
        os.close(request_read)
        os.close(result_write)
        if ruleset >= 0:
            os.close(ruleset)

    def discard(self):
        for fd in (self.request_fd, self.result_fd):
            if fd >= 0:
                os.close(fd)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        remove_tree(self.scratch)


def reap(exited):
    """Reaps the children that reported before exiting, and removes their scratch directories:
    after the answer is sent, so their teardown does not delay it."""
    while exited:
        pid, scratch = exited.pop()
        os.waitpid(pid, 0)
        remove_tree(scratch)


def run(waiting, limits, request, later):
    """Hands `request` (the code and rest frames, as they came) to the waiting child and
    collects its result within the deadline. Answers with what happened and a text: the
    child's result, report or traceback, or why it has none. A child that reported is reaped
    after the answer is sent (`later`)."""
    started = time.monotonic()
    write_all(waiting.request_fd, request)
    os.close(waiting.request_fd)
    waiting.request_fd = -1
    read_end, pid, scratch = waiting.result_fd, waiting.pid, waiting.scratch
    deadline = started + limits["timeout_ms"] / 1000
    chunks, size, outcome = [], 0, None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome = "timeout", f"Code execution timed out after {limits['timeout_ms'] / 1000:g} s and was stopped."
                break
            ready, _, _ = select.select([read_end], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(read_end, 1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_RESULT_BYTES:
                outcome = "output", f"Code output is larger than {MAX_RESULT_BYTES // (1024 * 1024)} MiB."
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        waiting.result_fd = -1
        if outcome is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    payload = b"".join(chunks)
    kind, text = payload[:1], payload[1:]
    elapsed_ms = (time.monotonic() - started) * 1000
    if outcome is None and kind in (b"R", b"P", b"E", b"M", b"S"):
        later.append((pid, scratch))
        status = 0
    else:
        _, status = os.waitpid(pid, 0)
        remove_tree(scratch)
    waiting.collected = True
    if outcome is None:
        outcome = outcome_of(kind, payload, status, limits)
    if outcome is None:
        return {{b"R": "ok", b"P": "script", b"E": "exception", b"S": "sandbox"}[kind]: True, "elapsed_ms": elapsed_ms}, text
    error, message = outcome
    return {"error": error, "elapsed_ms": elapsed_ms}, message.encode("utf-8")


def outcome_of(kind, payload, status, limits):
    """Why a child has no text to report, or None when it has."""
    if kind in (b"R", b"P", b"E", b"S"):
        return None
    if kind == b"M" or (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV and not payload):
        return "memory", f"Code ran out of memory (limit {limits['memory_bytes'] // (1024 * 1024)} MiB)."
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
        return "timeout", "Code used more CPU time than its limit and was stopped."
    if os.WIFSIGNALED(status):
        return "exit", f"Code was killed by signal {os.WTERMSIG(status)}."
    return "exit", f"Code exited with status {os.waitstatus_to_exitcode(status)} without a result."


def main():
    config = json.loads(read_frame())
    preload(PRELOAD + (PRELOAD_WITH_NETWORK if config.get("network") else []))
    preload_failures = preload_configured(config.get("preload", []))
    config["read_paths"] = SYSTEM_READ_PATHS + python_paths() + config.get("read_paths", [])
    config["privileges"] = privilege_plan()
    abi = landlock_abi() if config.get("landlock", True) else 0
    landlock = Landlock(abi, config["read_paths"]) if abi else None
    config["seccomp"] = config.get("seccomp", True) and seccomp_available()
    probe_dir = os.path.join(config["scratch"], f"probe{os.getpid()}")
    os.makedirs(probe_dir, exist_ok=True)
    os.rmdir(probe_dir)
    os.environ.clear()
    os.environ.update(CHILD_ENVIRONMENT)
    write_json_frame({
        "ready": True,
        "python": sys.version.split()[0],
        "landlock_abi": abi,
        "seccomp": config["seccomp"],
        "privileges": config["privileges"],
        "preload_failures": preload_failures,
    })
    gc.freeze()
    counter = 1
    waiting = Waiting(config, limits_of(config), landlock, counter)
    later = []
    while True:
        try:
            limits = read_frame()
            source = read_frame()
            rest = read_frame()
        except EOFError:
            waiting.discard()
            reap(later)
            return
        request = frame(source) + frame(rest)
        try:
            limits = limits_of(json.loads(limits))
            if limits != waiting.limits:
                waiting.discard()
                counter += 1
                waiting = Waiting(config, limits, landlock, counter)
            try:
                answer = run(waiting, limits, request, later)
            except BrokenPipeError:
                # The waiting child died before its request (killed from outside): a fresh one.
                waiting.discard()
                counter += 1
                waiting = Waiting(config, limits, landlock, counter)
                answer = run(waiting, limits, request, later)
        except Exception as error:
            if not waiting.collected:
                waiting.discard()
            limits = waiting.limits
            answer = {"error": "sandbox", "elapsed_ms": 0}, f"the sandbox failed: {error}".encode("utf-8", "replace")
        write_answer(*answer)
        reap(later)
        remember_compiled(source)
        counter += 1
        waiting = Waiting(config, limits, landlock, counter)


if __name__ == "__main__":
    main()
