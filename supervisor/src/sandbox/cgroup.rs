//! Worker cgroups behind one interface over two backends: cgroup v1 (per-controller hierarchies) and v2 (unified).
//!
//! The layout is read from `/proc/self/mountinfo` and our own position from `/proc/self/cgroup`; worker cgroups are
//! created *under* the supervisor's own cgroup (`<own>/wirebot-workers/<name>`), never at a fixed absolute path.
//! Limits go to the v1 controller when one is mounted (this hybrid host), else to the v2 controller; the unified
//! hierarchy, when present, is always joined too so `cgroup.kill` and `cgroup.freeze` work even where every
//! resource controller is bound to v1.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Error;

const MOUNTINFO: &str = "/proc/self/mountinfo";
const SELF_CGROUP: &str = "/proc/self/cgroup";
/// Folder under the supervisor's own cgroup that holds one cgroup per worker.
const WORKERS_DIR: &str = "wirebot-workers";
/// The v1 controllers limits are written to.
const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
const CPU_PERIOD_US: u64 = 100_000;

/// Resource limits of one worker (per tier in config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResourceLimits {
    /// Hard memory limit (RAM, and RAM+swap where the kernel accounts swap) in bytes.
    pub memory_bytes: Option<u64>,
    /// Maximum number of tasks (processes + threads) in the cgroup.
    pub pids: Option<u64>,
    /// CPU quota in percent of one core (100 = one full core).
    pub cpu_percent: Option<u32>,
}

/// Where the supervisor's own cgroups are, per hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    /// v1 controller → the supervisor's own cgroup directory in that controller's hierarchy.
    v1: BTreeMap<String, PathBuf>,
    /// The supervisor's own cgroup directory in the unified (v2) hierarchy.
    unified: Option<PathBuf>,
    /// Controllers available to children in the unified hierarchy (its `cgroup.controllers`).
    v2_controllers: Vec<String>,
}

impl CgroupLayout {
    /// Reads the mount table and our own membership.
    pub fn detect() -> Result<CgroupLayout, Error> {
        let mountinfo = read(Path::new(MOUNTINFO))?;
        let own = read(Path::new(SELF_CGROUP))?;
        let layout = CgroupLayout::parse(&mountinfo, &own)?;
        let v2_controllers = match &layout.unified {
            Some(dir) => match fs::read_to_string(dir.join("cgroup.controllers")) {
                Ok(s) => s.split_whitespace().map(str::to_owned).collect(),
                Err(_) => Vec::new(),
            },
            None => Vec::new(),
        };
        Ok(CgroupLayout {
            v2_controllers,
            ..layout
        })
    }

    /// Pure part of [`CgroupLayout::detect`], over the text of `/proc/self/mountinfo` and `/proc/self/cgroup`.
    fn parse(mountinfo: &str, own: &str) -> Result<CgroupLayout, Error> {
        // (fstype, super options, mount root, mount point)
        let mounts: Vec<(&str, Vec<&str>, &str, &str)> = mountinfo
            .lines()
            .filter_map(|line| {
                let (pre, post) = line.split_once(" - ")?;
                let pre: Vec<&str> = pre.split(' ').collect();
                let post: Vec<&str> = post.split(' ').collect();
                let fstype = *post.first()?;
                let opts = post
                    .get(2)
                    .map(|o| o.split(',').collect())
                    .unwrap_or_default();
                Some((fstype, opts, *pre.get(3)?, *pre.get(4)?))
            })
            .filter(|(fstype, ..)| *fstype == "cgroup" || *fstype == "cgroup2")
            .collect();
        let parse_err = |reason: String| Error::ProcParse {
            path: PathBuf::from(SELF_CGROUP),
            reason,
        };
        let mut v1 = BTreeMap::new();
        let mut unified = None;
        for line in own.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(parse_err(format!("malformed line {line:?}")));
            };
            if controllers.is_empty() {
                if let Some((_, _, root, point)) = mounts.iter().find(|(t, ..)| *t == "cgroup2") {
                    unified = Some(join_under(point, root, path));
                }
                continue;
            }
            for controller in controllers.split(',') {
                if !V1_CONTROLLERS.contains(&controller) {
                    continue;
                }
                if let Some((_, _, root, point)) = mounts
                    .iter()
                    .find(|(t, opts, ..)| *t == "cgroup" && opts.contains(&controller))
                {
                    v1.insert(controller.to_owned(), join_under(point, root, path));
                }
            }
        }
        Ok(CgroupLayout {
            v1,
            unified,
            v2_controllers: Vec::new(),
        })
    }

    /// True when limits are enforced by v1 controllers (hybrid or legacy host).
    pub fn is_v1(&self) -> bool {
        !self.v1.is_empty()
    }

    /// The parent dirs (one per hierarchy) under which worker cgroups are created.
    pub fn workers_parents(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .v1
            .values()
            .chain(&self.unified)
            .map(|d| d.join(WORKERS_DIR))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// The cgroup `name` in every hierarchy, as paths (nothing is created): to kill or inspect an existing one.
    pub fn handle(&self, name: &str) -> Result<CgroupSet, Error> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(Error::InvalidSpec {
                field: "cgroup name",
                reason: format!("{name:?} is not one path component"),
            });
        }
        let mut set = CgroupSet {
            v1: Vec::new(),
            unified: None,
            v2_limits: false,
        };
        for (controller, own) in &self.v1 {
            let dir = own.join(WORKERS_DIR).join(name);
            // cpu and cpuacct are often co-mounted; one directory serves both.
            if !set.v1.iter().any(|(_, d)| *d == dir) {
                set.v1.push((controller.clone(), dir));
            }
        }
        set.unified = self
            .unified
            .as_ref()
            .map(|own| own.join(WORKERS_DIR).join(name));
        if set.v1.is_empty() && set.unified.is_none() {
            return Err(Error::NoController { controller: "any" });
        }
        Ok(set)
    }

    /// Creates (or reuses, when empty) the cgroup `name` in every hierarchy and writes `limits`. Refuses a cgroup
    /// that still has processes: that would be a second worker for one user.
    pub fn create(&self, name: &str, limits: &ResourceLimits) -> Result<CgroupSet, Error> {
        let mut set = self.handle(name)?;
        if let Some(own) = &self.unified {
            let v2_needed = self.v2_controllers_needed(limits);
            if !v2_needed.is_empty() {
                self.prepare_v2_parent(own, &own.join(WORKERS_DIR), &v2_needed)?;
                set.v2_limits = true;
            }
        }
        for dir in set.dirs() {
            fs::create_dir_all(dir).map_err(|source| Error::Io {
                op: "create cgroup",
                path: dir.to_owned(),
                source,
            })?;
        }
        if !set.is_empty()? {
            return Err(Error::InvalidSpec {
                field: "cgroup name",
                reason: format!(
                    "cgroup {name} still has processes (an unknown worker?); stop it first"
                ),
            });
        }
        set.apply_limits(limits)?;
        Ok(set)
    }

    /// v2 controllers we must enable for `limits` (only those v1 does not already provide).
    fn v2_controllers_needed(&self, limits: &ResourceLimits) -> Vec<&'static str> {
        let wanted = [
            ("memory", limits.memory_bytes.is_some()),
            ("pids", limits.pids.is_some()),
            ("cpu", limits.cpu_percent.is_some()),
        ];
        wanted
            .into_iter()
            .filter(|(c, on)| {
                *on && !self.v1.contains_key(*c) && self.v2_controllers.iter().any(|a| a == c)
            })
            .map(|(c, _)| c)
            .collect()
    }

    /// Pure v2: enable controllers down to `<own>/wirebot-workers`. The "no internal processes" rule forbids that while
    /// the supervisor itself sits in `<own>`, so it first moves itself into the leaf `<own>/supervisor`.
    fn prepare_v2_parent(
        &self,
        own: &Path,
        parent: &Path,
        controllers: &[&str],
    ) -> Result<(), Error> {
        let enable: String = controllers.iter().map(|c| format!("+{c} ")).collect();
        let enable = enable.trim_end();
        let subtree = own.join("cgroup.subtree_control");
        if let Err(first) = write_raw(&subtree, enable) {
            if first.raw_os_error() != Some(libc::EBUSY) {
                return Err(Error::Io {
                    op: "enable v2 controllers",
                    path: subtree,
                    source: first,
                });
            }
            let leaf = own.join("supervisor");
            fs::create_dir_all(&leaf).map_err(|source| Error::Io {
                op: "create cgroup",
                path: leaf.clone(),
                source,
            })?;
            write_file(&leaf.join("cgroup.procs"), "0")?;
            write_file(&subtree, enable)?;
        }
        fs::create_dir_all(parent).map_err(|source| Error::Io {
            op: "create cgroup",
            path: parent.to_owned(),
            source,
        })?;
        write_file(&parent.join("cgroup.subtree_control"), enable)
    }
}

/// `mountpoint + (path relative to the mount's root)`: a cgroup namespace or bind mount may root a hierarchy below `/`.
fn join_under(mount_point: &str, mount_root: &str, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(mount_root)
        .unwrap_or(path)
        .trim_start_matches('/');
    if rel.is_empty() {
        PathBuf::from(mount_point)
    } else {
        Path::new(mount_point).join(rel)
    }
}

/// One worker's cgroup in every hierarchy; serialisable so a restarted supervisor can find it again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupSet {
    /// (first controller, directory) per v1 hierarchy.
    v1: Vec<(String, PathBuf)>,
    /// Directory in the unified hierarchy.
    unified: Option<PathBuf>,
    /// True when limits were written to the unified hierarchy (pure v2 host).
    v2_limits: bool,
}

impl CgroupSet {
    /// Every directory of this set (one per hierarchy).
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.v1
            .iter()
            .map(|(_, d)| d.as_path())
            .chain(self.unified.as_deref())
    }

    /// The `cgroup.procs` files the child writes `0` into to join (before exec, while still root).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs().map(|d| d.join("cgroup.procs")).collect()
    }

    /// A short, human-readable name for logs and the registry (the unified dir, else the first v1 dir).
    pub fn display_path(&self) -> PathBuf {
        self.unified
            .clone()
            .or_else(|| self.v1.first().map(|(_, d)| d.clone()))
            .unwrap_or_default()
    }

    fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, d)| d.as_path())
    }

    /// The directory holding `controller`'s files: v1 when mounted there, else the unified dir when limits live there.
    fn controller_dir(&self, controller: &str) -> Option<&Path> {
        self.v1_dir(controller).or(if self.v2_limits {
            self.unified.as_deref()
        } else {
            None
        })
    }

    fn apply_limits(&self, limits: &ResourceLimits) -> Result<(), Error> {
        if let Some(bytes) = limits.memory_bytes {
            match self.v1_dir("memory") {
                Some(dir) => {
                    write_file(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    // memsw >= limit, so it is written second; absent when swap accounting is off.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write_file(&memsw, &bytes.to_string())?;
                    }
                }
                None => {
                    let dir = self.controller_dir("memory").ok_or(Error::NoController {
                        controller: "memory",
                    })?;
                    write_file(&dir.join("memory.max"), &bytes.to_string())?;
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write_file(&swap, "0")?;
                    }
                }
            }
        }
        if let Some(pids) = limits.pids {
            let dir = self
                .controller_dir("pids")
                .ok_or(Error::NoController { controller: "pids" })?;
            write_file(&dir.join("pids.max"), &pids.to_string())?;
        }
        if let Some(percent) = limits.cpu_percent {
            let quota = u64::from(percent) * CPU_PERIOD_US / 100;
            match self.v1_dir("cpu") {
                Some(dir) => {
                    write_file(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write_file(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
                None => {
                    let dir = self
                        .controller_dir("cpu")
                        .ok_or(Error::NoController { controller: "cpu" })?;
                    write_file(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                }
            }
        }
        Ok(())
    }

    /// Pids currently in the cgroup (union over hierarchies).
    pub fn pids(&self) -> Result<Vec<i32>, Error> {
        let mut pids = Vec::new();
        for dir in self.dirs() {
            let path = dir.join("cgroup.procs");
            match fs::read_to_string(&path) {
                Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        op: "read cgroup.procs",
                        path,
                        source,
                    });
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.pids()?.is_empty())
    }

    /// True when `pid` is a member of this cgroup.
    pub fn contains(&self, pid: i32) -> Result<bool, Error> {
        Ok(self.pids()?.contains(&pid))
    }

    /// SIGKILLs every process in the cgroup and waits (bounded) until it is empty: v2 `cgroup.kill` when the unified
    /// hierarchy has it (atomic, no pid races), else SIGKILL of every pid in `cgroup.procs` until none is left.
    /// Blocking: call from `spawn_blocking`.
    pub fn kill_all(&self, deadline: Duration) -> Result<(), Error> {
        let start = Instant::now();
        let kill_file = self
            .unified
            .as_ref()
            .map(|d| d.join("cgroup.kill"))
            .filter(|p| p.exists());
        if let Some(path) = &kill_file {
            write_file(path, "1")?;
        }
        let mut pause = Duration::from_micros(200);
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if kill_file.is_none() {
                for pid in &pids {
                    // ESRCH: already gone between the read and the kill, which is what we want.
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                }
            }
            if start.elapsed() > deadline {
                return Err(Error::Sys {
                    op: "kill every process of a worker cgroup",
                    source: io::Error::new(
                        ErrorKind::TimedOut,
                        format!(
                            "{} processes left in {}",
                            pids.len(),
                            self.display_path().display()
                        ),
                    ),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Freezes (`true`) or thaws the whole cgroup (v2 `cgroup.freeze`; no-op without a unified hierarchy).
    pub fn freeze(&self, frozen: bool) -> Result<(), Error> {
        match self
            .unified
            .as_ref()
            .map(|d| d.join("cgroup.freeze"))
            .filter(|p| p.exists())
        {
            Some(path) => write_file(&path, if frozen { "1" } else { "0" }),
            None => Ok(()),
        }
    }

    /// How many times the kernel's OOM killer fired inside this cgroup (v1 `memory.oom_control`, v2 `memory.events`).
    pub fn oom_kills(&self) -> u64 {
        let mut files = Vec::new();
        if let Some(dir) = self.v1_dir("memory") {
            files.push(dir.join("memory.oom_control"));
        }
        if let Some(dir) = &self.unified {
            files.push(dir.join("memory.events"));
        }
        files
            .iter()
            .filter_map(|f| fs::read_to_string(f).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| {
                        l.strip_prefix("oom_kill ")
                            .and_then(|n| n.trim().parse::<u64>().ok())
                    })
                    .collect::<Vec<_>>()
            })
            .max()
            .unwrap_or(0)
    }

    /// Removes the (empty) cgroup from every hierarchy; a missing directory is fine. Retries briefly while the kernel
    /// finishes tearing down exited tasks (`EBUSY`). Blocking.
    pub fn remove(&self) -> Result<(), Error> {
        for dir in self.dirs() {
            let mut tries = 0;
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(source) => {
                        return Err(Error::Io {
                            op: "remove cgroup",
                            path: dir.to_owned(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Names of worker cgroups that exist under `layout` (to find workers no record knows about).
pub fn existing_worker_cgroups(layout: &CgroupLayout) -> Vec<String> {
    let mut names: Vec<String> = layout
        .workers_parents()
        .iter()
        .filter_map(|p| fs::read_dir(p).ok())
        .flat_map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })
}

/// cgroupfs control files are written in place (one `write(2)`), never through a temp file: they are not real files.
fn write_file(path: &Path, value: &str) -> Result<(), Error> {
    write_raw(path, value).map_err(|source| Error::Io {
        op: "write cgroup control file",
        path: path.to_owned(),
        source,
    })
}

fn write_raw(path: &Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
";
    const HYBRID_SELF: &str = "12:pids:/\n9:memory:/machine/abc\n4:cpu,cpuacct:/\n0::/\n";

    #[test]
    fn hybrid_layout_nests_under_own_cgroup() {
        let layout = CgroupLayout::parse(HYBRID_MOUNTINFO, HYBRID_SELF).unwrap();
        assert!(layout.is_v1());
        assert_eq!(
            layout.v1["memory"],
            PathBuf::from("/sys/fs/cgroup/memory/machine/abc")
        );
        assert_eq!(layout.v1["pids"], PathBuf::from("/sys/fs/cgroup/pids"));
        assert_eq!(
            layout.v1["cpu"],
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(
            layout.unified,
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn pure_v2_layout() {
        let mi = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let layout = CgroupLayout::parse(mi, "0::/user.slice/session-1.scope\n").unwrap();
        assert!(!layout.is_v1());
        assert_eq!(
            layout.unified,
            Some(PathBuf::from("/sys/fs/cgroup/user.slice/session-1.scope"))
        );
    }

    /// A pure-v2 host cannot be had on this hybrid one (its controllers are bound to v1), so the unified hierarchy is
    /// a directory laid out like cgroupfs: the files the kernel would create exist, and the test reads what we wrote.
    #[test]
    fn pure_v2_enables_controllers_down_to_the_worker_and_writes_v2_limits() {
        let root = tempfile::tempdir().unwrap();
        let own = root.path().join("wirebot.service");
        let worker = own.join(WORKERS_DIR).join("ann");
        fs::create_dir_all(&worker).unwrap();
        for f in [
            own.join("cgroup.subtree_control"),
            own.join(WORKERS_DIR).join("cgroup.subtree_control"),
            worker.join("cgroup.procs"),
            worker.join("memory.max"),
            worker.join("memory.swap.max"),
            worker.join("pids.max"),
            worker.join("cpu.max"),
        ] {
            fs::File::create(f).unwrap();
        }
        let mi = format!(
            "29 23 0:26 / {} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
            root.path().display()
        );
        let parsed = CgroupLayout::parse(&mi, "0::/wirebot.service\n").unwrap();
        let layout = CgroupLayout {
            v2_controllers: vec![
                "cpuset".into(),
                "cpu".into(),
                "memory".into(),
                "pids".into(),
            ],
            ..parsed
        };
        assert!(!layout.is_v1());
        let limits = ResourceLimits {
            memory_bytes: Some(256 << 20),
            pids: Some(64),
            cpu_percent: Some(50),
        };
        let set = layout.create("ann", &limits).unwrap();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(
            read(own.join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(
            read(own.join(WORKERS_DIR).join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(read(worker.join("memory.max")), (256u64 << 20).to_string());
        assert_eq!(read(worker.join("memory.swap.max")), "0");
        assert_eq!(read(worker.join("pids.max")), "64");
        assert_eq!(read(worker.join("cpu.max")), "50000 100000");
        assert_eq!(set.procs_files(), vec![worker.join("cgroup.procs")]);
        // Only what the limits ask for is enabled: no controller for an unlimited resource.
        let none = layout.v2_controllers_needed(&ResourceLimits {
            pids: Some(8),
            ..ResourceLimits::default()
        });
        assert_eq!(none, ["pids"]);
    }

    #[test]
    fn mount_root_is_stripped() {
        assert_eq!(
            join_under("/sys/fs/cgroup/memory", "/machine", "/machine/x"),
            PathBuf::from("/sys/fs/cgroup/memory/x")
        );
        assert_eq!(
            join_under("/sys/fs/cgroup", "/", "/"),
            PathBuf::from("/sys/fs/cgroup")
        );
    }
}
