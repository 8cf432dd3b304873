"""flowgate's Python zygote: a warm interpreter that forks one locked-down child per execution.

The server starts it with an empty environment and talks to it over stdin/stdout in frames (a
4-byte big-endian length, then the bytes). The first frame (JSON) configures it; it answers with
the protections this machine allows. Then each request is three frames: its limits (JSON, with the
request's id), the code of a code node (empty for a whole program) and the rest of the request
(JSON). The zygote reads only the first two and hands the last two, unparsed, to a fresh child.
Each answer is two frames: what happened (JSON, echoing the id) and the child's text (its JSON
result, its program's report or its traceback). The child for the next request is forked and
locked down while the zygote waits for it, so neither cost falls on the request. The zygote
itself never runs user code, so no execution can see another's data.

When the zygote runs as root, it first moves into a mount namespace of its own whose root is an
empty, read-only tmpfs holding only the paths code may read, bound read-only at their own paths
(the interpreter's standard library, the site-packages in use, the shared libraries loaded, time
zones, certificates when code may use the network, `--code-read-path` folders, and /dev/null,
/dev/zero, /dev/full, /dev/random, /dev/urandom). Each child is then forked into a pid namespace
of its own (it is pid 1 there and sees no other process), joins a cgroup of its own (memory, pids,
CPU) where the kernel offers one, and moves into new user, mount, IPC, UTS and (unless code may use
the network) network namespaces, as uid 65534 mapped to nobody on the host. It mounts a private
tmpfs as its scratch directory, drops every capability, and installs landlock (the same read
paths, the scratch directory read-write) and the server's seccomp allow-list. Everything it
started dies with it; its namespaces, its System V IPC and its scratch files are gone when it is.

Without root (or when the kernel refuses namespaces) a child gets the rest: a scratch directory
on the host, dropped privileges, rlimits, landlock and seccomp; the start report says what is off.

Every page the zygote or a child writes after a fork costs a page fault, and on this path faults
are most of the time an execution takes; so what can be prepared once (the environment, the
seccomp programs, the landlock rules, the file system, compiled code) is prepared in the zygote,
and the zygote does not parse what it only passes on.
"""

import base64
import ctypes
import gc
import json
import os
import resource
import select
import signal
import struct
import sys
import sysconfig
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
LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
SANDBOX_ID = 65534  # the sandbox's uid and gid: nobody, inside and outside its user namespace
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_GET_SECCOMP = 21
SECCOMP_MODE_FILTER = 2
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
MAX_RESULT_BYTES = 64 * 1024 * 1024
# The threads one execution may have (RLIMIT_NPROC counts them per user namespace, pids.max per cgroup).
MAX_THREADS = 128
# An execution that closes its result pipe without a result gets this long to exit by itself.
EXIT_GRACE = 0.1


def fail_errno(what):
    error = ctypes.get_errno()
    raise OSError(error, f"{what}: {os.strerror(error)}")


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


# --- seccomp: the server's allow-list, installed as given ------------------------------------


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
# _IOWR('!', 0, struct seccomp_notif) and _IOWR('!', 1, struct seccomp_notif_resp).
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
NOTIFICATION_BYTES = 80
EPERM = 1


class Seccomp:
    """The server's compiled filters, with and without network, in two kinds: refusals as EPERM
    from the filter, or as notifications the zygote answers with EPERM after noting the call's
    name (so a failed execution can say which call was refused). A child only writes its own pid
    into its copy. The zygote uses notifications when its probe shows the kernel gives them."""

    def __init__(self, config):
        self.programs = {}
        for network, key in ((False, "offline"), (True, "online")):
            for refusal in ("errno", "notify"):
                program = config[key][refusal]
                code = base64.b64decode(program["program"])
                buffer = ctypes.create_string_buffer(code, len(code))
                fprog = SockFprog(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
                self.programs[network, refusal == "notify"] = (buffer, program["own_pid_slots"], fprog)
        self.names = {int(number): name for number, name in config["names"].items()}
        self.notify = "seccomp" in NUMBERS and "pidfd_getfd" in NUMBERS

    def install(self, network):
        """Installs the filter; returns the descriptor of its listener when refusals notify."""
        buffer, slots, fprog = self.programs[network, self.notify]
        pid = os.getpid()
        for offset in slots:
            struct.pack_into("<I", buffer, offset, pid)
        if self.notify:
            listener = LIBC.syscall(NUMBERS["seccomp"], SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, ctypes.byref(fprog))
            if listener < 0:
                fail_errno("seccomp filter refused")
            return listener
        if LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
            fail_errno("seccomp filter refused")
        return -1

    def name(self, number):
        return self.names.get(number, f"number {number}")


SECCOMP = None


def answer_refusal(listener, refused):
    """Answers one call the filter refused with EPERM, noting its name in `refused`."""
    import fcntl

    notification = bytearray(NOTIFICATION_BYTES)
    try:
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, notification)
    except OSError:
        return  # the caller was killed or interrupted
    notification_id, = struct.unpack_from("<Q", notification, 0)
    number, = struct.unpack_from("<i", notification, 16)
    name = SECCOMP.name(number)
    if name not in refused and len(refused) < 8:
        refused.append(name)
    try:
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, bytearray(struct.pack("<QqiI", notification_id, 0, -EPERM, 0)))
    except OSError:
        pass


def refusals_note(refused):
    if not refused:
        return b""
    calls = "system call " + refused[0] if len(refused) == 1 else "system calls " + ", ".join(refused)
    return f"\n(flowgate's sandbox refused the {calls}: code nodes may not use it.)".encode()


# --- landlock -------------------------------------------------------------------------------

FS_FILE = (1 << 0) | (1 << 1) | (1 << 2)  # execute, write file, read file
FS_READ = (1 << 2) | (1 << 3)  # read file, read dir


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
    descriptor stays open in the zygote (a child closes it before user code runs). A child adds
    its scratch directory itself."""

    def __init__(self, numbers, abi, read_paths, devices):
        self.numbers = numbers
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
        for paths, access in ((read_paths, FS_READ), (devices, self.handled)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue
                allowed = access if os.path.isdir(path) else access & file_rights & self.handled
                self.rules.append((path, struct.pack("<Qi", allowed, fd)))

    def add(self, ruleset, path, access):
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            if LIBC.syscall(self.numbers["landlock_add_rule"], ruleset, 1, struct.pack("<Qi", access, fd), 0) != 0:
                fail_errno(f"landlock rule for {path} refused")
        finally:
            os.close(fd)

    def ruleset(self, network):
        """A new ruleset descriptor with the prepared rules."""
        attributes = self.attributes[network]
        ruleset = LIBC.syscall(self.numbers["landlock_create_ruleset"], attributes, ctypes.c_size_t(len(attributes)), ctypes.c_uint32(0))
        if ruleset < 0:
            fail_errno("landlock ruleset refused")
        try:
            for path, rule in self.rules:
                if LIBC.syscall(self.numbers["landlock_add_rule"], ruleset, 1, rule, 0) != 0:
                    fail_errno(f"landlock rule for {path} refused")
        except BaseException:
            os.close(ruleset)
            raise
        return ruleset

    def restrict(self, ruleset, scratch):
        self.add(ruleset, scratch, self.handled)
        if LIBC.syscall(self.numbers["landlock_restrict_self"], ruleset, 0) != 0:
            fail_errno("landlock restrict_self refused")
        os.close(ruleset)


def landlock_abi(numbers):
    abi = LIBC.syscall(numbers["landlock_create_ruleset"], None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return abi if abi > 0 else 0


# --- what code may read ---------------------------------------------------------------------

DEVICES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]


def library_search_path():
    """The folders the dynamic loader searches (its defaults and /etc/ld.so.conf)."""
    import glob

    folders = {"/lib", "/lib64", "/usr/lib", "/usr/lib64"}
    pending, seen = ["/etc/ld.so.conf"], set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        try:
            with open(path) as conf:
                lines = conf.read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if line.startswith("include "):
                pending.extend(sorted(glob.glob(line.split(None, 1)[1])))
            elif line.startswith("/"):
                folders.add(line)
    return {os.path.realpath(folder) for folder in folders}


def mapped_libraries():
    """What the shared libraries this interpreter has loaded (the C library, libpython, the
    extension modules of preloaded packages) need to be found again: the loader's folders they
    lie in (extension modules imported later link to the same ones), else the files themselves."""
    search_path = library_search_path()
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.rstrip("\n").split(None, 5)
            path = fields[5] if len(fields) == 6 else ""
            name = os.path.basename(path)
            if path.startswith("/") and (name.endswith(".so") or ".so." in name):
                folder = os.path.dirname(os.path.realpath(path))
                paths.add(folder if folder in search_path else path)
    return paths


def without_nested(paths):
    """`paths` without those inside another of them."""
    kept = []
    for path in sorted(paths):
        if not any(path.startswith(parent.rstrip("/") + "/") for parent in kept):
            kept.append(path)
    return kept


def read_allow_list(read_paths, network):
    """The exact paths code may read: never a parent folder because something lies below it."""
    # The standard library (where os.py is) and this interpreter's site-packages; sys.path adds
    # lib-dynload, the zip of the standard library and .pth folders.
    paths = {os.path.dirname(os.__file__)}
    paths.update(path for key, path in sysconfig.get_paths().items() if key in ("purelib", "platlib"))
    paths.update(entry for entry in sys.path if entry and os.path.isabs(entry))
    paths.update(mapped_libraries())
    paths.add("/etc/ld.so.cache")
    try:
        import zoneinfo

        paths.update(zoneinfo.TZPATH)
    except ImportError:
        pass
    paths.add("/etc/localtime")
    if network:
        paths.update(["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/host.conf", "/etc/services", "/etc/protocols"])
        try:
            import ssl

            verify = ssl.get_default_verify_paths()
            for path in (verify.cafile, verify.capath, verify.openssl_cafile, verify.openssl_capath):
                if path:
                    paths.add(path)
                    # The certificate folder's entries link into the certificate store.
                    paths.add(os.path.realpath(path))
            if verify.openssl_capath:
                paths.add(os.path.join(os.path.dirname(verify.openssl_capath), "openssl.cnf"))
            for folder in ("/usr/share/ca-certificates", "/etc/ssl/certs"):
                paths.add(folder)
        except ImportError:
            pass
    paths.update(read_paths)
    return without_nested(path for path in paths if os.path.exists(path))


# --- the sandbox's file system --------------------------------------------------------------


def mount(source, target, fstype, flags, data=None):
    encode = lambda text: None if text is None else os.fsencode(text)  # noqa: E731
    if LIBC.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        fail_errno(f"mount {target}")


class SandboxRoot:
    """Builds the file system children see: an empty tmpfs at `base` holding each allowed path
    bound read-only at its own path (symlinks on the way recreated), then made the root."""

    def __init__(self, base):
        self.base = base
        self.bound = []

    def inside(self, path):
        return self.base + path

    def covered(self, path):
        return any(path == bound or path.startswith(bound.rstrip("/") + "/") for bound in self.bound)

    def bind(self, host, writable=False):
        target = self.inside(host)
        if os.path.isdir(host):
            os.makedirs(target, 0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
            if not os.path.exists(target):
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        mount(host, target, None, MS_BIND)
        flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (MS_NOEXEC if writable else MS_RDONLY | MS_NODEV)
        mount(None, target, None, flags)
        self.bound.append(host)

    def expose(self, path, depth=0):
        """Makes `path` resolve inside the new root as it does on the host."""
        if depth > 16:
            return
        parts = [part for part in path.split("/") if part]
        current = "/"
        for index, part in enumerate(parts):
            host = os.path.join(current, part)
            if self.covered(host):
                return
            if os.path.islink(host):
                link = self.inside(host)
                if not os.path.lexists(link):
                    os.makedirs(os.path.dirname(link), 0o755, exist_ok=True)
                    os.symlink(os.readlink(host), link)
                rest = "/".join(parts[index + 1:])
                resolved = os.path.realpath(host)
                self.expose(os.path.join(resolved, rest) if rest else resolved, depth + 1)
                return
            if index == len(parts) - 1:
                self.bind(host)
                return
            current = host

    def build(self, read_paths, scratch_point):
        mount("tmpfs", self.base, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
        # Folders first (shortest real path first), so nothing is bound twice.
        for path in sorted(read_paths, key=lambda path: len(os.path.realpath(path))):
            self.expose(path)
        for device in DEVICES:
            if os.path.exists(device):
                self.bind(device, writable=True)
        os.makedirs(self.inside(scratch_point), 0o755, exist_ok=True)
        os.chdir(self.base)
        if LIBC.syscall(NUMBERS["pivot_root"], b".", b".") != 0:
            fail_errno("pivot_root")
        if LIBC.umount2(b".", MNT_DETACH) != 0:
            fail_errno("detaching the host's file system")
        os.chdir("/")
        mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def scratch_bytes(memory_bytes):
    """The size of an execution's scratch tmpfs (its pages count as memory, in the cgroup)."""
    return max(memory_bytes // 4, 16 * 1024 * 1024)


def scratch_point_for(read_paths):
    """Where each child's private tmpfs goes: /tmp, unless /tmp itself is a read path."""
    return "/flowgate-tmp" if "/tmp" in read_paths else "/tmp"


OPEN_TREE_CLONE, AT_RECURSIVE, MOVE_MOUNT_F_EMPTY_PATH = 1, 0x8000, 4


def keep_bound_below(bound):
    """Copies of the mounts of the read-only folders bound below the scratch point (a virtualenv
    under /tmp), taken before the child's tmpfs hides them and put back on top of it."""
    copies = []
    for path in bound:
        fd = LIBC.syscall(NUMBERS["open_tree"], -100, os.fsencode(path), OPEN_TREE_CLONE | AT_RECURSIVE | os.O_CLOEXEC)
        if fd < 0:
            fail_errno(f"keeping {path}")
        copies.append((path, fd))
    return copies


def put_back(copies):
    for path, fd in copies:
        os.makedirs(path, 0o755, exist_ok=True)
        if LIBC.syscall(NUMBERS["move_mount"], fd, b"", -100, os.fsencode(path), MOVE_MOUNT_F_EMPTY_PATH) != 0:
            fail_errno(f"putting back {path}")
        os.close(fd)


# --- cgroups --------------------------------------------------------------------------------


def own_cgroups():
    """(version, {controller: folder}) of this process's cgroups that it may create groups in."""
    mounts = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            separator = fields.index("-")
            mounts.append((fields[3], fields[4], fields[separator + 1], fields[-1].split(",")))
    memberships = {}
    with open("/proc/self/cgroup") as cgroups:
        for line in cgroups:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            memberships[controllers] = path
    wanted = ("memory", "pids", "cpu")
    found = {}
    for root, point, fstype, options in mounts:
        if fstype != "cgroup":
            continue
        for controllers, path in memberships.items():
            names = controllers.split(",")
            for controller in wanted:
                if controller in names and controller in options and controller not in found:
                    relative = os.path.relpath(path, root) if path.startswith(root) else None
                    if relative is not None:
                        found[controller] = os.path.normpath(os.path.join(point, relative))
    if found:
        return 1, found
    for root, point, fstype, _ in mounts:
        path = memberships.get("")
        if fstype == "cgroup2" and path is not None and path.startswith(root):
            folder = os.path.normpath(os.path.join(point, os.path.relpath(path, root)))
            try:
                with open(os.path.join(folder, "cgroup.controllers")) as available:
                    controllers = available.read().split()
            except OSError:
                continue
            return 2, {controller: folder for controller in wanted if controller in controllers}
    return 0, {}


class Cgroups:
    """A cgroup per zygote in each controller it may use, holding the zygote and the children it
    forks (born in it: moving each child into a group of its own cost a cgroup migration per
    execution, whose RCU grace periods stalled the next request by up to 20 ms). A zygote runs
    one execution at a time, so its group bounds that execution: memory (the execution's limit,
    its scratch tmpfs and the zygote's own pages), threads, and one core of CPU time. RLIMIT_AS
    and RLIMIT_NPROC bound each execution exactly on top."""

    def __init__(self, memory_bytes, scratch_bytes, configured_parent):
        self.version, folders = own_cgroups()
        if configured_parent:
            self.version, folders = 2, {name: configured_parent for name in ("memory", "pids", "cpu")}
        if "memory" not in folders or "pids" not in folders:
            raise OSError("no memory and pids cgroup controllers are available to this process")
        for folder in set(folders.values()):
            remove_stale_groups(folder)
        token = base64.b32encode(os.urandom(5)).decode().lower()
        self.group = group = f"flowgate-code-{token}"
        self.folders = {}  # controller -> descriptor of this zygote's group folder
        self.parents = {}
        made = []
        try:
            for controller, folder in sorted(folders.items()):
                path = os.path.join(folder, group)
                if path not in made:
                    os.mkdir(path)
                    made.append(path)
                    if self.version == 2:
                        enabled = " ".join("+" + name for name in ("memory", "pids", "cpu") if name in folders)
                        for control in (folder, path):
                            with open(os.path.join(control, "cgroup.subtree_control"), "w") as subtree:
                                subtree.write(enabled)
                self.folders[controller] = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                self.parents[controller] = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            self.controllers = self.distinct()
            for controller in self.controllers:
                os.mkdir("worker", dir_fd=self.folders[controller])
            own_pages = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            self.limit = memory_bytes + scratch_bytes + 2 * own_pages + 64 * 1024 * 1024
            self.configure()
            for controller in self.controllers:
                self.write(controller, "cgroup.procs", 0)
        except OSError:
            for path in reversed(made):
                remove_group(path)
            raise
        self.kills = self.oom_kills()

    def distinct(self):
        """One controller per distinct folder (v2 has all controllers in one)."""
        seen, names = set(), []
        for controller, fd in sorted(self.folders.items()):
            key = os.fstat(fd).st_ino, os.fstat(fd).st_dev
            if key not in seen:
                seen.add(key)
                names.append(controller)
        return names

    def write(self, controller, name, value):
        fd = os.open(f"worker/{name}", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.folders[controller])
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)

    def read(self, controller, name):
        try:
            fd = os.open(f"worker/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.folders[controller])
        except OSError:
            return ""
        try:
            return os.read(fd, 65536).decode()
        finally:
            os.close(fd)

    def configure(self):
        # The execution's threads, plus the zygote, its spare children and those still dying.
        self.write("pids", "pids.max", MAX_THREADS + 16)
        if "cpu" in self.folders:
            # One core's worth of time per period: threads cannot take another tenant's core.
            if self.version == 1:
                self.write("cpu", "cpu.cfs_period_us", 100000)
                self.write("cpu", "cpu.cfs_quota_us", 100000)
            else:
                self.write("cpu", "cpu.max", "100000 100000")
        names = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes") if self.version == 1 else ("memory.max", "memory.swap.max")
        self.write("memory", names[0], self.limit)
        try:
            self.write("memory", names[1], self.limit if self.version == 1 else 0)
        except OSError:
            pass  # no swap accounting: nothing to limit

    def oom_kills(self):
        events = self.read("memory", "memory.oom_control" if self.version == 1 else "memory.events")
        for line in events.splitlines():
            fields = line.split()
            if fields[:1] == ["oom_kill"] and len(fields) == 2 and fields[1].isdigit():
                return int(fields[1])
        return 0

    def out_of_memory(self):
        """Whether the kernel killed in the group for its memory limit since last asked, and that limit."""
        kills = self.oom_kills()
        killed, self.kills = kills > self.kills, kills
        return killed, self.limit

    def close(self):
        """At the zygote's end: back to the cgroup it came from, and its group removed."""
        if self.version != 1:
            return  # cgroup v2 allows no process in the parent; the next zygote removes the group
        for controller in self.controllers:
            try:
                fd = os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.parents[controller])
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
                os.rmdir("worker", dir_fd=self.folders[controller])
                os.rmdir(self.group, dir_fd=self.parents[controller])
            except OSError:
                pass

    def describe(self):
        return f"v{self.version} " + ",".join(sorted(self.folders)) + " (one group per worker)"


def remove_group(path):
    for leaf in os.listdir(path) if os.path.isdir(path) else []:
        if os.path.isdir(os.path.join(path, leaf)):
            try:
                os.rmdir(os.path.join(path, leaf))
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def remove_stale_groups(folder):
    """Groups of zygotes that are gone (killed before they could remove theirs): a live zygote
    is always in its group's `worker` leaf."""
    try:
        names = [name for name in os.listdir(folder) if name.startswith("flowgate-code-")]
    except OSError:
        return
    for name in names:
        try:
            with open(os.path.join(folder, name, "worker", "cgroup.procs")) as procs:
                if procs.read().strip():
                    continue
        except OSError:
            pass
        remove_group(os.path.join(folder, name))


# --- privileges without namespaces ----------------------------------------------------------


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


def drop_capabilities():
    """Empties every capability set; exec is refused, so none can come back."""
    header = CapHeader(0x20080522, 0)
    data = (CapData * 2)()
    if LIBC.syscall(NUMBERS["capset"], ctypes.byref(header), data) != 0:
        fail_errno("dropping capabilities refused")


def become_sandbox_user():
    os.setresgid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID)
    os.setresuid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID)


# --- one execution --------------------------------------------------------------------------


# The environment user code sees, set in the zygote once its modules are imported; a child adds
# HOME and TMPDIR (its scratch directory).
CHILD_ENVIRONMENT = {"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}
DEV_NULL = os.open("/dev/null", os.O_RDWR)
NUMBERS = {}


class Setup:
    """What the zygote settled on at start, for every child."""

    def __init__(self, config):
        self.config = config
        self.namespaces = False  # a pid namespace per child, user/mount/ipc/uts/net namespaces
        self.proc = -1  # the host's /proc, to write a child's uid and gid maps
        self.host_pid_namespace = -1
        # An empty network namespace children without network join (see `offline_network`).
        self.offline_network = -1
        self.cgroups = None
        self.landlock = None
        self.seccomp = False
        self.privileges = "not root"
        self.scratch_point = "/tmp"
        # Read-only folders bound below the scratch point, which each child puts back on top
        # of its tmpfs there.
        self.bound_below_scratch = []
        self.counter = 0


def lock_down(setup, limits, scratch, ruleset, request_fd, result_fd):
    os.setsid()
    for fd in (0, 1, 2):
        os.dup2(DEV_NULL, fd)
    keep = [request_fd, result_fd, ruleset, setup.offline_network]
    # Nothing of the zygote's stays open but this child's pipes, its landlock rules and (until
    # it has joined them) its cgroup folders.
    low = 3
    for fd in sorted(fd for fd in keep if fd >= 0):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)
    if setup.namespaces:
        os.setgroups([])
        network = 0
        if not limits["network"]:
            if shares_offline_network(setup):
                if LIBC.setns(setup.offline_network, CLONE_NEWNET) != 0:
                    fail_errno("joining the empty network namespace")
            else:
                network = CLONE_NEWNET
        if setup.offline_network >= 0:
            os.close(setup.offline_network)
        flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | network
        if LIBC.unshare(flags) != 0:
            fail_errno("unshare")
        # The zygote maps uid and gid 65534 into the new user namespace, then says go.
        write_all(result_fd, b"u")
        if os.read(request_fd, 1) != b"g":
            os._exit(0)
        become_sandbox_user()
        size = scratch_bytes(limits["memory_bytes"])
        copies = keep_bound_below(setup.bound_below_scratch)
        mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={size},mode=0700,uid={SANDBOX_ID},gid={SANDBOX_ID}")
        put_back(copies)
    os.chdir(scratch)
    os.environ["HOME"] = scratch
    os.environ["TMPDIR"] = scratch
    seconds = max(1, -(-limits["timeout_ms"] // 1000))
    rlimits = [
        (resource.RLIMIT_CPU, (seconds, seconds + 1)),
        (resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"])),
        (resource.RLIMIT_FSIZE, (setup.config["max_file_bytes"], setup.config["max_file_bytes"])),
        (resource.RLIMIT_NOFILE, (64, 64)),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_MEMLOCK, (0, 0)),
        (resource.RLIMIT_MSGQUEUE, (0, 0)),
        # Threads only (new processes are refused by seccomp); counted in the child's own user
        # namespace, so one execution's threads never count against another's.
        (resource.RLIMIT_NPROC, (MAX_THREADS, MAX_THREADS)),
    ]
    for kind, value in rlimits:
        resource.setrlimit(kind, value)
    if setup.namespaces:
        drop_capabilities()
    elif setup.privileges == "uid 65534":
        os.chown(scratch, SANDBOX_ID, SANDBOX_ID)
        os.setgroups([])
        become_sandbox_user()
    elif setup.privileges == "capabilities":
        drop_capabilities()
    # Dies with the zygote (set after the uid changes, which clear it).
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        fail_errno("no_new_privs refused")
    if ruleset >= 0:
        setup.landlock.restrict(ruleset, scratch)
    listener = -1
    if setup.seccomp:
        listener = SECCOMP.install(limits["network"])
        if listener >= 0:
            # The zygote takes a copy of the listener before it sends the request.
            write_all(result_fd, b"L" + struct.pack("<i", listener))
    return listener


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


def memory_limit_in_force():
    return resource.getrlimit(resource.RLIMIT_AS)[0]


def child(setup, limits, scratch, ruleset, request_fd, result_fd):
    """Locks down, then waits for its one request (the zygote forks it ahead of time)."""
    status = 0
    try:
        try:
            listener = lock_down(setup, limits, scratch, ruleset, request_fd, result_fd)
        except Exception as error:
            os.write(result_fd, b"S" + f"the sandbox could not be set up: {error}".encode("utf-8", "replace"))
            os._exit(3)
        try:
            source = read_frame(request_fd)
            request = json.loads(read_frame(request_fd))
        except EOFError:
            os._exit(0)
        os.close(request_fd)
        if listener >= 0:
            os.close(listener)
        mode = request.get("mode")
        if mode == "script":
            run_script(request, result_fd)
        if mode == "probe":
            refused = LIBC.syscall(NUMBERS["ptrace"], 0x4206, 1, 0, 0) if "ptrace" in NUMBERS else 0
            report = {"uid": os.getuid(), "pid": os.getpid(), "cwd": os.getcwd(), "refused_errno": ctypes.get_errno() if refused < 0 else 0}
            write_all(result_fd, b"R" + json.dumps(report).encode())
            os.close(result_fd)
            os._exit(0)
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
            try:
                payload = b"R" + json.dumps(output, ensure_ascii=False).encode("utf-8", "surrogatepass")
            except RecursionError:
                # What Dify's own check of the result's depth (5) says of anything deeper.
                payload = b"E" + b"ValueError: Depth limit 5 reached, object too deep."
        except MemoryError:
            payload = b"M" + str(memory_limit_in_force()).encode()
        except BaseException as error:  # SystemExit and KeyboardInterrupt are user errors too
            payload = b"E" + user_traceback(error).encode("utf-8", "replace")
        write_all(result_fd, payload)
        # The zygote answers at end of file, and ends this process then.
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


def open_pidfd(pid):
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1


class Waiting:
    """A child forked and locked down before its request arrives, so a request pays for
    neither; it has run nothing and sees nothing but its scratch directory."""

    def __init__(self, setup, limits):
        self.setup = setup
        self.limits = limits
        setup.counter += 1
        # Whether the child is reaped or queued to be (`run`); otherwise `discard` ends it.
        self.collected = False
        self.prefix = b""
        if setup.namespaces:
            self.scratch, self.host_scratch = setup.scratch_point, None
        else:
            token = base64.b32encode(os.urandom(10)).decode().lower()
            self.scratch = self.host_scratch = os.path.join(setup.config["scratch"], f"x-{token}")
            os.mkdir(self.scratch, 0o700)
        ruleset = setup.landlock.ruleset(limits["network"]) if setup.landlock else -1
        request_read, self.request_fd = os.pipe()
        self.result_fd, result_write = os.pipe()
        self.pid = fork_into_pid_namespace(setup) if setup.namespaces else os.fork()
        if self.pid == 0:
            os.close(self.request_fd)
            os.close(self.result_fd)
            child(setup, limits, self.scratch, ruleset, request_read, result_write)
        self.pidfd = open_pidfd(self.pid)
        self.listener = -1
        # What the zygote still has to do for the child before it may take a request: map its
        # user (namespaces), then take a copy of its seccomp listener (notified refusals).
        self.steps = (["map"] if setup.namespaces else []) + (["listener"] if setup.seccomp and SECCOMP.notify else [])
        os.close(request_read)
        os.close(result_write)
        if ruleset >= 0:
            os.close(ruleset)

    @property
    def ready(self):
        return not self.steps

    def advance(self):
        """Takes the child's next set-up message (waiting for it) and does the zygote's part."""
        step = self.steps.pop(0)
        first = os.read(self.result_fd, 1)
        if step == "map" and first == b"u":
            # Only a process with privileges outside the child's new user namespace can map
            # another uid than the child's own.
            map_sandbox_user(self.setup.proc, self.pid)
            write_all(self.request_fd, b"g")
        elif step == "listener" and first == b"L":
            number, = struct.unpack("<i", read_exact(self.result_fd, 4))
            listener = LIBC.syscall(NUMBERS["pidfd_getfd"], self.pidfd, number, 0)
            if listener < 0:
                fail_errno("taking the child's seccomp listener")
            self.listener = listener
        else:
            self.prefix = first  # the child failed before: its report follows
            self.steps = []

    def prepare(self):
        while self.steps:
            self.advance()

    def kill(self):
        try:
            if self.pidfd >= 0:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reap(self):
        """Waits for the child (which has been killed or has exited) and frees what it used;
        returns its wait status and its rusage."""
        _, status, usage = os.wait4(self.pid, 0)
        for fd in (self.pidfd, self.listener):
            if fd >= 0:
                os.close(fd)
        self.pidfd = self.listener = -1
        if self.host_scratch:
            remove_tree(self.host_scratch)
        return status, usage

    def discard(self):
        for fd in (self.request_fd, self.result_fd):
            if fd >= 0:
                os.close(fd)
        self.request_fd = self.result_fd = -1
        self.kill()
        self.reap()


def fork_into_pid_namespace(setup):
    """Forks a child that is pid 1 of a new pid namespace: the zygote's next children go into the
    namespace it asks for, and it asks for its own back right after."""
    if LIBC.unshare(CLONE_NEWPID) != 0:
        fail_errno("unshare(CLONE_NEWPID)")
    try:
        pid = os.fork()
    except BaseException:
        LIBC.setns(setup.host_pid_namespace, CLONE_NEWPID)
        raise
    if pid != 0 and LIBC.setns(setup.host_pid_namespace, CLONE_NEWPID) != 0:
        fail_errno("setns(CLONE_NEWPID)")
    return pid


def map_sandbox_user(proc, pid):
    for name, text in (("setgroups", "deny"), ("uid_map", f"{SANDBOX_ID} {SANDBOX_ID} 1"), ("gid_map", f"{SANDBOX_ID} {SANDBOX_ID} 1")):
        fd = os.open(f"{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def reap(exited):
    """Reaps the children that reported (and were killed after), and frees what they used."""
    while exited:
        waiting = exited.pop()
        waiting.reap()


# Children killed after they reported, reaped once gone; past this many the oldest is waited for.
MAX_DYING = 8
# Children forked and locked down ahead of requests: with two, a child's set-up (its cgroup and
# namespaces wait on RCU grace periods) overlaps the execution before it instead of delaying
# the next request.
PREFORK = 2


def reap_gone(dying, ready):
    """Reaps the dying children whose pidfd says they are gone (their teardown, a namespace's
    RCU grace period among it, is not waited for with a request in line)."""
    for waiting in list(dying):
        if waiting.pidfd < 0 or waiting.pidfd in ready:
            dying.remove(waiting)
            waiting.reap()
    while len(dying) > MAX_DYING:
        waiting = dying.pop(0)
        waiting.reap()


def run(waiting, limits, request, later, spares=()):
    """Hands `request` (the code and rest frames, as they came) to the waiting child and
    collects its result within the deadline. Answers with what happened and a text: the
    child's result, report or traceback, or why it has none. The child is ended as soon as its
    result is in (whatever it does afterwards) and reaped after the answer is sent (`later`)."""
    started = time.monotonic()
    waiting.prepare()
    write_all(waiting.request_fd, request)
    os.close(waiting.request_fd)
    waiting.request_fd = -1
    read_end, listener = waiting.result_fd, waiting.listener
    deadline = started + limits["timeout_ms"] / 1000
    chunks, size, outcome, stopped, refused = [waiting.prefix] if waiting.prefix else [], len(waiting.prefix), None, False, []
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome = "timeout", f"Code execution timed out after {limits['timeout_ms'] / 1000:g} s and was stopped."
                break
            # The spare children's set-up goes on meanwhile, so the next request finds one ready.
            setting_up = [spare for spare in spares if not spare.ready]
            watched = [read_end] + ([listener] if listener >= 0 else []) + [spare.result_fd for spare in setting_up]
            ready, _, _ = select.select(watched, [], [], remaining)
            for spare in setting_up:
                if spare.result_fd in ready:
                    spare.advance()
            if listener in ready:
                answer_refusal(listener, refused)
            if read_end not in ready:
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
    payload = b"".join(chunks)
    kind, text = payload[:1], payload[1:]
    if outcome is None and kind not in (b"R", b"P", b"E", b"M", b"S") and waiting.pidfd >= 0:
        # No result, and its pipe is closed: it crashed (and is exiting), or it closed the pipe
        # and goes on. It gets a moment to exit by itself before it is stopped.
        exited, _, _ = select.select([waiting.pidfd], [], [], EXIT_GRACE)
        stopped = not exited
    waiting.kill()
    elapsed_ms = (time.monotonic() - started) * 1000
    waiting.collected = True
    if outcome is None and kind in (b"R", b"P", b"E", b"S"):
        later.append(waiting)
        if kind == b"E":
            text += refusals_note(refused)
        return {{b"R": "ok", b"P": "script", b"E": "exception", b"S": "sandbox"}[kind]: True, "elapsed_ms": elapsed_ms}, text
    status, usage = waiting.reap()
    memory = waiting.setup.cgroups.out_of_memory() if waiting.setup.cgroups is not None else (False, None)
    if outcome is None:
        outcome = outcome_of(kind, text, status, usage, limits, stopped, memory)
    error, message = outcome
    return {"error": error, "elapsed_ms": elapsed_ms}, message.encode("utf-8") + refusals_note(refused)


SIGNAL_MEANINGS = {
    signal.SIGABRT: "aborted, usually by a library that found its state broken",
    signal.SIGBUS: "a bad memory access",
    signal.SIGFPE: "an arithmetic fault",
    signal.SIGILL: "an illegal instruction",
    signal.SIGSEGV: "a segmentation fault",
    signal.SIGTRAP: "a breakpoint trap",
}


def mebibytes(size):
    return f"{size / (1024 * 1024):g} MiB"


def outcome_of(kind, text, status, usage, limits, stopped, memory):
    """Why a child has no text to report, told as what happened."""
    oom_killed, cgroup_limit = memory
    if kind == b"M":
        try:
            limit = int(text)
        except ValueError:
            limit = limits["memory_bytes"]
        return "memory", f"Code ran out of memory (limit {mebibytes(limit)})."
    if stopped:
        return "exit", "Code closed the sandbox's result pipe without a result and was stopped."
    if not os.WIFSIGNALED(status):
        return "exit", f"Code exited with status {os.waitstatus_to_exitcode(status)} without a result."
    number = os.WTERMSIG(status)
    cpu_seconds = usage.ru_utime + usage.ru_stime
    cpu_limit = max(1, -(-limits["timeout_ms"] // 1000))
    if number == signal.SIGKILL and oom_killed:
        return "memory", f"Code ran out of memory (limit {mebibytes(cgroup_limit)}) and was stopped by the kernel."
    # RLIMIT_CPU counts whole seconds: the kernel's SIGKILL at a (possibly lowered) hard limit
    # comes within a few ticks past one.
    at_cpu_limit = cpu_seconds >= cpu_limit or (round(cpu_seconds) >= 1 and abs(cpu_seconds - round(cpu_seconds)) < 0.05)
    if number == signal.SIGXCPU or (number == signal.SIGKILL and at_cpu_limit):
        return "timeout", f"Code used more CPU time than its limit ({cpu_seconds:.1f} s) and was stopped."
    if number == signal.SIGSEGV:
        return "memory", f"Code crashed with a segmentation fault (SIGSEGV), most often from running out of memory (limit {mebibytes(limits['memory_bytes'])}) or of stack in deep recursion."
    if number == signal.SIGSYS:
        return "exit", "Code was stopped for a system call in a foreign ABI (32-bit or x32), which the sandbox never allows (SIGSYS)."
    if number == signal.SIGKILL:
        return "exit", "Code was killed (SIGKILL) from outside the sandbox: by the host's out-of-memory killer or an operator."
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    meaning = SIGNAL_MEANINGS.get(number)
    return "exit", f"Code was killed by {name} (signal {number}{': ' + meaning if meaning else ''})."


def namespaces_work(setup):
    """Whether the kernel gives a child everything `lock_down` asks of it: a pid namespace, new
    user, mount, IPC, UTS and network namespaces with the sandbox's uid mapped, and a tmpfs of
    its own. Asked once, before the zygote commits to its own mount namespace."""
    setup.host_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    setup.proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    pid = fork_into_pid_namespace(setup)
    if pid == 0:
        status = 1
        try:
            os.close(ready_read)
            os.close(go_write)
            os.setgroups([])
            if LIBC.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET) != 0:
                fail_errno("unshare")
            os.write(ready_write, b"u")
            if os.read(go_read, 1) == b"g":
                become_sandbox_user()
                mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=1m")
                status = 0
        except BaseException as error:  # noqa: BLE001 - reported as the reason
            os.write(ready_write, b"S" + str(error).encode("utf-8", "replace"))
        os._exit(status)
    os.close(ready_write)
    os.close(go_read)
    try:
        first = os.read(ready_read, 1)
        if first == b"u":
            map_sandbox_user(setup.proc, pid)
            os.write(go_write, b"g")
        report = os.read(ready_read, 4096)
    finally:
        os.close(go_write)
        os.close(ready_read)
        _, status = os.waitpid(pid, 0)
    if status != 0:
        raise OSError(f"a child cannot get its own namespaces: {report[1:].decode('utf-8', 'replace') or f'status {status}'}")


def shares_offline_network(setup):
    """Whether a child without network joins the zygote's empty network namespace rather than
    making one: under the seccomp allow-list nothing can change a network namespace (no sockets
    but socket pairs, no binding, no socket ioctls, no /proc/sys), so each execution finds it as
    new, and a new one per execution costs a millisecond (copy_net_ns and cleanup_net). Without
    seccomp every execution gets its own."""
    return setup.offline_network >= 0 and setup.seccomp


def empty_network_namespace():
    """A new network namespace, held by a descriptor; the zygote itself stays in the host's."""
    host = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if LIBC.unshare(CLONE_NEWNET) != 0:
            fail_errno("unshare(CLONE_NEWNET)")
        empty = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        if LIBC.setns(host, CLONE_NEWNET) != 0:
            fail_errno("back to the host's network namespace")
    finally:
        os.close(host)
    return empty


def start_namespaces(setup, read_paths):
    """Moves the zygote into its own mount namespace rooted in the sandbox's file system, keeping
    what it needs of the host: its /proc (to map children's users), its pid namespace and an
    empty network namespace for children without network."""
    setup.offline_network = empty_network_namespace()
    if LIBC.unshare(CLONE_NEWNS) != 0:
        fail_errno("unshare(CLONE_NEWNS)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    setup.scratch_point = scratch_point_for(read_paths)
    root = SandboxRoot(setup.config["scratch"])
    root.build(read_paths, setup.scratch_point)
    below = setup.scratch_point.rstrip("/") + "/"
    setup.bound_below_scratch = [path for path in root.bound if path.startswith(below)]


def probe(setup):
    """One execution through the whole lock-down, before any request: what it saw, or why it
    could not be set up."""
    limits = dict(limits_of(setup.config), timeout_ms=2000)
    waiting, later = Waiting(setup, limits), []
    outcome, text = run(waiting, limits, frame(b"") + frame(b'{"mode": "probe"}'), later)
    reap(later)
    if outcome.get("ok"):
        return json.loads(text), None
    return None, text.decode("utf-8", "replace")


def main():
    global SECCOMP
    config = json.loads(read_frame())
    NUMBERS.update(config["syscalls"])
    preload(PRELOAD + (PRELOAD_WITH_NETWORK if config.get("network") else []))
    preload_failures = preload_configured(config.get("preload", []))
    read_paths = read_allow_list(config.get("read_paths", []), config.get("network", False))
    setup = Setup(config)
    root = os.geteuid() == 0
    reasons = {}
    if root:
        setup.privileges = "uid 65534" if all(readable_by_nobody(path) for path in (sys.prefix, os.path.dirname(os.__file__))) else "capabilities"
    if root and config.get("cgroups", True):
        try:
            setup.cgroups = Cgroups(config["memory_bytes"], scratch_bytes(config["memory_bytes"]), config.get("cgroup_parent"))
        except OSError as error:
            reasons["cgroups"] = str(error)
    elif not root:
        reasons["cgroups"] = "not root"
    if root and config.get("namespaces", True):
        try:
            namespaces_work(setup)
            start_namespaces(setup, read_paths)
            setup.namespaces = True
        except OSError as error:
            reasons["namespaces"] = str(error)
    elif not root:
        reasons["namespaces"] = "not root"
    abi = landlock_abi(NUMBERS) if config.get("landlock", True) else 0
    setup.landlock = Landlock(NUMBERS, abi, read_paths, DEVICES) if abi else None
    if config.get("seccomp") is not None:
        SECCOMP = Seccomp(config["seccomp"])
        setup.seccomp = LIBC.prctl(PR_GET_SECCOMP, 0, 0, 0, 0) >= 0
    os.environ.clear()
    os.environ.update(CHILD_ENVIRONMENT)
    gc.freeze()
    # A child that cannot be set up in namespaces the kernel offered (namespaces_work) fails the
    # start: the zygote is already inside its own file system, with no host folder to fall back to.
    seen, failure = probe(setup)
    if setup.seccomp and SECCOMP.notify and (failure is not None or (seen or {}).get("refused_errno") != EPERM):
        # The kernel does not give user notifications (or taking the listener): refusals then
        # come straight from the filter, unnamed.
        reasons["seccomp notifications"] = failure or "no EPERM from a notified refusal"
        SECCOMP.notify = False
        seen, failure = probe(setup)
    if failure is not None and setup.cgroups is not None and not setup.namespaces:
        reasons["cgroups"] = failure
        setup.cgroups = None
        seen, failure = probe(setup)
    write_json_frame({
        "ready": failure is None,
        "failure": failure,
        "python": sys.version.split()[0],
        "landlock_abi": abi,
        "seccomp": setup.seccomp,
        "privileges": f"uid {SANDBOX_ID} (nobody) in its own user namespace" if setup.namespaces else setup.privileges,
        "namespaces": (["user", "pid", "mount", "ipc", "uts"] + ([] if config.get("network") else ["net"])) if setup.namespaces else [],
        "network_namespace": ("one empty namespace per worker, which code cannot change" if shares_offline_network(setup) else "a new one per execution") if setup.namespaces and not config.get("network") else "",
        "cgroups": setup.cgroups.describe() if setup.cgroups is not None else "",
        "off": reasons,
        "seen": seen,
        "read_paths": read_paths,
        "preload_failures": preload_failures,
    })
    if failure is not None:
        return
    spares, later, limits = [], [], limits_of(config)
    while True:
        while len(spares) < PREFORK:
            spares.append(Waiting(setup, limits))
        # Until a request comes: the spare children's set-up as they ask for it, and the dying
        # children reaped as they go.
        while True:
            watched = [0] + [spare.result_fd for spare in spares if not spare.ready] + [dying.pidfd for dying in later if dying.pidfd >= 0]
            ready, _, _ = select.select(watched, [], [])
            reap_gone(later, ready)
            asking = [spare for spare in spares if not spare.ready and spare.result_fd in ready]
            for spare in asking:
                spare.advance()
            if 0 in ready and not asking:
                break
        try:
            head = read_frame()
            source = read_frame()
            rest = read_frame()
        except EOFError:
            for spare in spares:
                spare.discard()
            reap(later)
            if setup.cgroups is not None:
                setup.cgroups.close()
            return
        request = frame(source) + frame(rest)
        request_id, waiting = None, None
        try:
            head = json.loads(head)
            request_id = head.get("id")
            limits = limits_of(head)
            for spare in [spare for spare in spares if spare.limits != limits]:
                spares.remove(spare)
                spare.discard()
            waiting = spares.pop(0) if spares else Waiting(setup, limits)
            try:
                outcome, text = run(waiting, limits, request, later, spares)
            except BrokenPipeError:
                # The spare child died before its request (killed from outside): a fresh one.
                waiting.discard()
                waiting = Waiting(setup, limits)
                outcome, text = run(waiting, limits, request, later)
        except Exception as error:
            if waiting is not None and not waiting.collected:
                waiting.discard()
            outcome, text = {"error": "sandbox", "elapsed_ms": 0}, f"the sandbox failed: {error}".encode("utf-8", "replace")
        outcome["id"] = request_id
        write_answer(outcome, text)
        reap_gone(later, [])
        remember_compiled(source)


if __name__ == "__main__":
    main()
