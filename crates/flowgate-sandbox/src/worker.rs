//! The JavaScript worker process: QuickJS executions one at a time, for the server that started
//! it, over stdin/stdout in frames (a 4-byte big-endian length, then JSON). The first frame is
//! its configuration; then, before it answers, it locks itself down: uid 65534 when started as
//! root, new user, mount, IPC, UTS and network namespaces, rlimits, death with its parent,
//! no_new_privs, and a seccomp allow-list that leaves it reading requests from stdin, writing
//! answers to stdout and managing its own memory — no file, socket or process can be reached,
//! whatever the code running in QuickJS makes of it.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value as Json, json};

use crate::seccomp;

const NOBODY: u32 = 65534;
/// Room beyond the JavaScript heap for the worker's own code, stack and buffers.
const ADDRESS_SPACE_HEADROOM: u64 = 256 * 1024 * 1024;

/// Runs the worker until its server closes stdin. Called first thing in `main` (before any
/// thread exists), by the `flowgate` binary's hidden worker command.
pub fn javascript_worker_main() -> ExitCode {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let Ok(Some(config)) = read_frame(&mut input) else {
        return ExitCode::FAILURE;
    };
    let timeout = Duration::from_millis(config.get("timeout_ms").and_then(Json::as_u64).unwrap_or(15_000));
    let memory = config.get("memory_bytes").and_then(Json::as_u64).unwrap_or(128 * 1024 * 1024);
    let hello = lock_down(memory);
    if write_frame(&mut output, &hello).is_err() {
        return ExitCode::FAILURE;
    }
    let memory = usize::try_from(memory).unwrap_or(usize::MAX);
    loop {
        match read_frame(&mut input) {
            Ok(Some(request)) => {
                let answer = crate::javascript::answer(&request, timeout, memory);
                if write_frame(&mut output, &answer).is_err() {
                    return ExitCode::FAILURE;
                }
            }
            Ok(None) => return ExitCode::SUCCESS,
            Err(_) => return ExitCode::FAILURE,
        }
    }
}

fn read_frame(input: &mut impl Read) -> std::io::Result<Option<Json>> {
    let mut header = [0u8; 4];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    input.read_exact(&mut body)?;
    serde_json::from_slice(&body).map(Some).map_err(std::io::Error::other)
}

fn write_frame(output: &mut impl Write, value: &Json) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let length = u32::try_from(body.len()).map_err(|_| std::io::Error::other("answer too large"))?;
    output.write_all(&length.to_be_bytes())?;
    output.write_all(&body)?;
    output.flush()
}

/// Locks the process down and says how (the hello frame).
fn lock_down(memory_bytes: u64) -> Json {
    use nix::sys::resource::{Resource, setrlimit};
    use nix::unistd::{Gid, Uid};

    let mut off = serde_json::Map::new();
    let mut privileges = "not root".to_owned();
    if Uid::effective().is_root() {
        let nobody = (Uid::from_raw(NOBODY), Gid::from_raw(NOBODY));
        let dropped = nix::unistd::setgroups(&[])
            .and_then(|()| nix::unistd::setresgid(nobody.1, nobody.1, nobody.1))
            .and_then(|()| nix::unistd::setresuid(nobody.0, nobody.0, nobody.0));
        match dropped {
            Ok(()) => privileges = format!("uid {NOBODY}"),
            Err(error) => {
                off.insert("privileges".into(), json!(format!("cannot become uid {NOBODY}: {error}")));
            }
        }
    }
    let namespaces = match own_namespaces() {
        Ok(()) => {
            privileges.push_str(" in its own user namespace");
            json!(["user", "mount", "ipc", "uts", "net"])
        }
        Err(error) => {
            off.insert("namespaces".into(), json!(error));
            json!([])
        }
    };
    let address_space = virtual_size().saturating_add(memory_bytes).saturating_add(ADDRESS_SPACE_HEADROOM);
    let limits = [
        (Resource::RLIMIT_AS, address_space),
        (Resource::RLIMIT_CORE, 0),
        (Resource::RLIMIT_FSIZE, 0),
        (Resource::RLIMIT_NOFILE, 16),
        (Resource::RLIMIT_NPROC, 0),
        (Resource::RLIMIT_MEMLOCK, 0),
    ];
    for (resource, limit) in limits {
        if let Err(error) = setrlimit(resource, limit, limit) {
            off.insert(format!("rlimit {resource:?}"), json!(error.to_string()));
        }
    }
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if let Err(error) = nix::sys::prctl::set_no_new_privs() {
        off.insert("no_new_privs".into(), json!(error.to_string()));
    }
    let seccomp = match install_seccomp() {
        Ok(()) => true,
        Err(error) => {
            off.insert("seccomp".into(), json!(error));
            false
        }
    };
    json!({"ready": true, "seccomp": seccomp, "namespaces": namespaces, "privileges": privileges, "off": off})
}

/// New user (its own uid and gid mapped to themselves), mount, IPC, UTS and network namespaces:
/// nothing of the host's network, System V IPC or mounts is shared with it.
fn own_namespaces() -> Result<(), String> {
    use nix::sched::CloneFlags;

    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    // The maps of a process whose uid changed are writable only while it is dumpable.
    let _ = nix::sys::prctl::set_dumpable(true);
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWNET;
    let result = nix::sched::unshare(flags).map_err(|error| format!("unshare: {error}")).and_then(|()| {
        for (file, text) in [("setgroups", "deny".to_owned()), ("uid_map", format!("{uid} {uid} 1")), ("gid_map", format!("{gid} {gid} 1"))]
        {
            std::fs::write(format!("/proc/self/{file}"), text).map_err(|error| format!("writing {file}: {error}"))?;
        }
        Ok(())
    });
    let _ = nix::sys::prctl::set_dumpable(false);
    result
}

fn virtual_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmSize:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn install_seccomp() -> Result<(), String> {
    let program = seccomp::compile(&seccomp::javascript_policy(), seccomp::Refusal::Errno).ok_or("not available on this architecture")?;
    let filter: Vec<seccompiler::sock_filter> = seccomp::Program::instructions(&program.with_own_pid(std::process::id()))
        .map(|(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
        .collect();
    seccompiler::apply_filter(&filter).map_err(|error| error.to_string())
}
