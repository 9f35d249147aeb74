//! Benchmark: provisioning N users (fresh, then idempotent re-runs) against a baseline that copies the same tree
//! with plain `std::fs` (no fsync, no checks), all measured in the same run. Prints users/s and the ratios.
//!
//! Run: `cargo bench -p provisioning --bench provision` (`BENCH_USERS=1000` to change N; `BENCH_DIR` for the data
//! fs, default the temp dir; `BENCH_RUNTIME=/dev/shm` puts the runtime dir on a tmpfs as in production).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use provisioning::{Layout, ProvisionSpec, Tier, deprovision, provision};

fn spec(i: usize) -> ProvisionSpec {
    ProvisionSpec {
        user: format!("user-{i:05}").parse().unwrap(),
        tier: Tier::Dedicated,
        owner: None,
        email: None,
        display_name: None,
        gateway_port: Some(20000 + u16::try_from(i % 10000).unwrap()),
        provider_keys: BTreeMap::new(),
    }
}

/// Plain recursive copy with modes: what "make the tree" costs without atomicity, fsync or validation. With
/// `durable`, every file and directory is fsynced after it is written (what durability alone costs).
fn copy_tree(from: &Path, to: &Path, durable: bool) {
    std::fs::create_dir(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst, durable);
        } else {
            std::fs::copy(&src, &dst).unwrap();
            if durable {
                std::fs::File::open(&dst).unwrap().sync_all().unwrap();
            }
        }
    }
    let mode = std::fs::metadata(from).unwrap().permissions().mode();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).unwrap();
    if durable {
        std::fs::File::open(to).unwrap().sync_all().unwrap();
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let n: usize = std::env::var("BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let base = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let tmp = tempfile::tempdir_in(&base).unwrap();
    // Production keeps the runtime dir on a tmpfs (/run/wirebot): BENCH_RUNTIME=/dev/shm mirrors that.
    let runtime_base = std::env::var_os("BENCH_RUNTIME").map(std::path::PathBuf::from);
    let runtime_tmp = runtime_base
        .as_ref()
        .map(|b| tempfile::tempdir_in(b).unwrap());
    let runtime = runtime_tmp
        .as_ref()
        .map_or_else(|| tmp.path().join("run"), |t| t.path().join("run"));
    let layout = Layout::new(tmp.path().join("data"), runtime);

    // Baseline source: one provisioned tree.
    let template = provision(&layout, &spec(99_999)).unwrap().user_dir;
    let copies = tmp.path().join("copies");
    std::fs::create_dir(&copies).unwrap();
    let t = Instant::now();
    for i in 0..n {
        copy_tree(&template, &copies.join(format!("user-{i:05}")), false);
    }
    let baseline = t.elapsed();
    let t = Instant::now();
    for i in 0..n {
        copy_tree(&template, &copies.join(format!("durable-{i:05}")), true);
    }
    let durable = t.elapsed();

    let t = Instant::now();
    for i in 0..n {
        assert!(provision(&layout, &spec(i)).unwrap().created);
    }
    let fresh = t.elapsed();

    let t = Instant::now();
    for i in 0..n {
        assert!(!provision(&layout, &spec(i)).unwrap().changed);
    }
    let again = t.elapsed();

    // Concurrent callers (as the daemon's blocking pool is): ext4 merges their fsyncs into shared journal commits.
    let threads = 16;
    let t = Instant::now();
    std::thread::scope(|scope| {
        for k in 0..threads {
            let layout = &layout;
            scope.spawn(move || {
                for i in (n + k..2 * n).step_by(threads) {
                    assert!(provision(layout, &spec(i)).unwrap().created);
                }
            });
        }
    });
    let parallel = t.elapsed();

    let archive_n = n.min(100);
    let t = Instant::now();
    for i in 0..archive_n {
        deprovision(&layout, &spec(i).user).unwrap();
    }
    let removed = t.elapsed();

    println!(
        "provisioning benchmark: {n} users, data in {}, runtime in {}",
        base.display(),
        layout.runtime_dir.display()
    );
    println!(
        "  baseline std::fs copy   {:>9.0} users/s  ({:?})",
        rate(n, baseline),
        baseline
    );
    println!(
        "  baseline + fsync each  {:>9.0} users/s  ({:?})",
        rate(n, durable),
        durable
    );
    println!(
        "  provision (fresh)       {:>9.0} users/s  ({:?})  {:.2}x the baseline's time",
        rate(n, fresh),
        fresh,
        fresh.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "  provision ({threads} threads)  {:>9.0} users/s  ({:?})",
        rate(n, parallel),
        parallel
    );
    println!(
        "  provision (idempotent)  {:>9.0} users/s  ({:?})  {:.2}x the baseline's time",
        rate(n, again),
        again,
        again.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "  deprovision (archive)   {:>9.0} users/s  ({:?}, {archive_n} users)",
        rate(archive_n, removed),
        removed
    );
}
