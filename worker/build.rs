//! Link flags for the `wirebot-worker` binary: a non-PIE executable, so no start-up relocation of ~1.25 MB of
//! `.data.rel.ro` into private pages (idle RSS, BENCHMARKS.md issue 3). Trade-off, chosen for a process that runs
//! once per member: the binary's own code loads at a fixed address (ASLR still applies to the libraries, heap and
//! stacks).

fn main() {
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    if linux_gnu {
        println!("cargo:rustc-link-arg-bin=wirebot-worker=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
