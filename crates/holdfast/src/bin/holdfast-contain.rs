//! `holdfast-contain [--cgroup FILE]… [--argv0 NAME] -- PROGRAM ARGS…`: the
//! launcher every workspace starts through. It joins the workspace's cgroups
//! and execs PROGRAM. A binary of its own because it is on every start's
//! path: it is a fraction of the size of `holdfast`, so its exec costs a
//! fraction of the time (`holdfast contain …` does the same, as a fallback).

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let e = holdfast_cp::cgroup::contain_main(&args);
    eprintln!("holdfast-contain: {e}");
    std::process::ExitCode::from(125)
}
