//! The JavaScript worker as a program of its own (for this crate's tests; the server runs the
//! same worker as `flowgate __javascript-worker`).

fn main() -> std::process::ExitCode {
    flowgate_sandbox::javascript_worker_main()
}
