//! The registry: one SQLite file (`<data_dir>/wirebot.db`, WAL) that is the single source of truth for users, their
//! bindings, their workers and the append-only `events` audit log. Typed rows in, typed rows out; no SQL leaves this file.
//!
//! Concurrency: one connection behind a `std::sync::Mutex`. Every method is synchronous and short; async callers run
//! them through `tokio::task::spawn_blocking`, so the lock is never held across an `.await`. Multi-step operations that
//! must be atomic (insert a user and allocate its uid/port) go through [`Registry::transaction`] and a [`Tx`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use provisioning::{Tier, UserId};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use crate::config::{PortRange, UidRange};
use crate::error::Error;

/// The schema, one migration per entry; `PRAGMA user_version` counts how many have run. Later issues append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: users, bindings, workers, events.
    "CREATE TABLE users (
        id           TEXT PRIMARY KEY NOT NULL,
        tier         TEXT NOT NULL CHECK (tier IN ('shared', 'dedicated')),
        status       TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('provisioning', 'active', 'suspended')),
        uid          INTEGER UNIQUE,
        gid          INTEGER,
        port         INTEGER UNIQUE,
        email        TEXT,
        display_name TEXT,
        token_hash   TEXT NOT NULL,
        seq          INTEGER NOT NULL DEFAULT 0,
        created_at   TEXT NOT NULL,
        updated_at   TEXT NOT NULL
    ) STRICT;
    CREATE TABLE bindings (
        id      INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        kind    TEXT NOT NULL CHECK (kind IN ('host', 'path', 'token')),
        value   TEXT NOT NULL,
        UNIQUE (kind, value)
    ) STRICT;
    CREATE INDEX bindings_user ON bindings(user_id);
    CREATE TABLE workers (
        user_id        TEXT PRIMARY KEY NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        pid            INTEGER,
        pid_start_time INTEGER,
        cgroup         TEXT,
        state          TEXT NOT NULL,
        restarts       INTEGER NOT NULL DEFAULT 0,
        diagnosis_json TEXT,
        updated_at     TEXT NOT NULL
    ) STRICT;
    CREATE TABLE events (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        ts      TEXT NOT NULL,
        actor   TEXT NOT NULL,
        action  TEXT NOT NULL,
        user_id TEXT,
        outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'error')),
        detail  TEXT
    ) STRICT;
    CREATE INDEX events_user ON events(user_id, id);
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;",
    // 2: the webhook receiver's tables (dedup, member map, desired states, tombstones, operations).
    crate::webhook::MIGRATION,
    // 3: the shared tier: shard workers (their own port and worker record) and which shard hosts each shared member.
    "CREATE TABLE shards (
        shard          INTEGER PRIMARY KEY NOT NULL CHECK (shard >= 0),
        port           INTEGER NOT NULL UNIQUE,
        pid            INTEGER,
        pid_start_time INTEGER,
        cgroup         TEXT,
        state          TEXT NOT NULL DEFAULT 'stopped',
        restarts       INTEGER NOT NULL DEFAULT 0,
        diagnosis_json TEXT,
        updated_at     TEXT NOT NULL
    ) STRICT;
    CREATE TABLE shard_members (
        user_id TEXT PRIMARY KEY NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        shard   INTEGER NOT NULL REFERENCES shards(shard)
    ) STRICT;
    CREATE INDEX shard_members_shard ON shard_members(shard);
    CREATE VIEW used_ports AS SELECT port FROM users WHERE port IS NOT NULL UNION ALL SELECT port FROM shards;",
    // 4: members' ritual settings (daily standup, weekly reflection, their time zone), as validated text.
    "CREATE TABLE schedules (
        user_id    TEXT PRIMARY KEY NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        timezone   TEXT,
        standup    TEXT,
        reflection TEXT
    ) STRICT;",
    // 5: a member's own worker runtime, overriding its tier's (`NULL` = the tier's).
    "ALTER TABLE users ADD COLUMN runtime TEXT CHECK (runtime IS NULL OR runtime IN ('wirebot', 'clawdbot'));",
];

/// Whether a member is served. Suspension arrives with the webhooks issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    /// Row reserved (id, uid, port) while the state directory is being created outside the registry lock. Becomes
    /// `Active` when provisioning succeeds; removed when it fails; swept at start if the daemon died meanwhile.
    Provisioning,
    Active,
    Suspended,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Provisioning => "provisioning",
            UserStatus::Active => "active",
            UserStatus::Suspended => "suspended",
        }
    }
}

/// One row of `users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRow {
    pub id: UserId,
    pub tier: Tier,
    pub status: UserStatus,
    /// The tenant's uid (gid = uid) when the daemon runs as root; `None` = caller-owned.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Loopback port of the dedicated worker; `None` for shared members.
    pub port: Option<u16>,
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// Hex SHA-256 of the gateway token (the token itself lives only in the user's `clawdbot.json`).
    #[serde(skip)]
    pub token_hash: String,
    /// Desired-state sequence number (last applied webhook `seq`).
    pub seq: i64,
    /// The member's own worker runtime when it overrides its tier's (`[tiers.<tier>] runtime`); used while dedicated.
    pub runtime: Option<crate::config::Runtime>,
    pub created_at: String,
    pub updated_at: String,
}

/// A new user as the registry stores it; uid and port are allocated inside [`Tx::insert_user`].
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub tier: Tier,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub token_hash: String,
    pub runtime: Option<crate::config::Runtime>,
}

/// How a request reaches a member (used by the proxy issue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BindingKind {
    Host,
    Path,
    Token,
}

impl BindingKind {
    fn as_str(self) -> &'static str {
        match self {
            BindingKind::Host => "host",
            BindingKind::Path => "path",
            BindingKind::Token => "token",
        }
    }
}

/// One row of `bindings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindingRow {
    pub user_id: UserId,
    pub kind: BindingKind,
    pub value: String,
}

/// One row of `workers`: what the lifecycle manager needs to re-adopt a worker (pid + start time + cgroup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerRecord {
    pub user_id: UserId,
    pub pid: Option<i32>,
    /// Process start time in clock ticks since boot (`/proc/<pid>/stat` field 22): guards against pid reuse.
    pub pid_start_time: Option<u64>,
    pub cgroup: Option<String>,
    /// The lifecycle state name (`starting`, `running`, `backoff`, `quarantined`, …).
    pub state: String,
    pub restarts: u32,
    /// Free-form diagnosis (exit status, OOM, last log lines) as JSON text.
    pub diagnosis_json: Option<String>,
    pub updated_at: String,
}

/// One shard of the shared tier: a multi-agent worker on its own port, and its last recorded lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardRow {
    pub shard: u32,
    pub port: u16,
    pub pid: Option<i32>,
    pub pid_start_time: Option<u64>,
    pub cgroup: Option<String>,
    pub state: String,
    pub restarts: u32,
    pub diagnosis_json: Option<String>,
    pub updated_at: String,
    /// How many shared members it hosts.
    pub members: u32,
}

/// Result of an audited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Error,
}

/// One row of the append-only `events` log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub id: i64,
    pub ts: String,
    /// Who asked: `cli`, `api`, `daemon`, `webhook`, …
    pub actor: String,
    /// What: `user.create`, `user.delete`, `worker.restart`, …
    pub action: String,
    pub user_id: Option<String>,
    pub outcome: Outcome,
    pub detail: Option<String>,
}

/// Counts for `GET /v1/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UserCounts {
    pub total: u64,
    pub shared: u64,
    pub dedicated: u64,
}

/// Handle to the registry database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn db_err(op: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |source| Error::Registry { op, source }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Registry {
    /// Opens (creating if needed) `path`, sets WAL + busy timeout, and runs pending migrations.
    pub fn open(path: &Path) -> Result<Registry, Error> {
        let mut conn = Connection::open(path).map_err(db_err("open the registry"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err("set busy_timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err("enable WAL"))?;
        // NORMAL in WAL mode: a commit survives a process crash; only an OS crash may lose the last transactions.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_err("set synchronous"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(db_err("enable foreign keys"))?;
        migrate(&mut conn)?;
        Ok(Registry {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (the transaction rolls back on drop),
        // so a poisoned lock is safe to reuse.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` in one IMMEDIATE transaction: committed if `f` returns `Ok`, rolled back otherwise.
    pub fn transaction<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T, Error>) -> Result<T, Error> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err("begin a transaction"))?;
        let wrapped = Tx { tx };
        let value = f(&wrapped)?;
        wrapped.tx.commit().map_err(db_err("commit"))?;
        Ok(value)
    }

    /// One user by id.
    pub fn user(&self, id: &UserId) -> Result<Option<UserRow>, Error> {
        self.transaction(|tx| tx.user(id))
    }

    /// Users left in `provisioning` by a daemon that stopped mid-create.
    pub fn interrupted_creates(&self) -> Result<Vec<UserId>, Error> {
        Ok(self
            .users()?
            .into_iter()
            .filter(|u| u.status == UserStatus::Provisioning)
            .map(|u| u.id)
            .collect())
    }

    /// Every user, ordered by id.
    pub fn users(&self) -> Result<Vec<UserRow>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))
            .map_err(db_err("list users"))?;
        let rows = stmt
            .query_map([], user_from_row)
            .map_err(db_err("list users"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(db_err("list users"))
    }

    /// How many users there are, per tier.
    pub fn counts(&self) -> Result<UserCounts, Error> {
        let conn = self.lock();
        let mut counts = UserCounts::default();
        let mut stmt = conn
            .prepare_cached("SELECT tier, COUNT(*) FROM users GROUP BY tier")
            .map_err(db_err("count users"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db_err("count users"))?;
        for row in rows {
            let (tier, n) = row.map_err(db_err("count users"))?;
            let n = u64::try_from(n).unwrap_or(0);
            counts.total += n;
            match tier.as_str() {
                "shared" => counts.shared += n,
                _ => counts.dedicated += n,
            }
        }
        Ok(counts)
    }

    /// Appends one audit event (its own transaction, so failed actions are recorded even when theirs rolled back).
    pub fn append_event(
        &self,
        actor: &str,
        action: &str,
        user_id: Option<&str>,
        outcome: Outcome,
        detail: Option<&str>,
    ) -> Result<i64, Error> {
        self.transaction(|tx| tx.append_event(actor, action, user_id, outcome, detail))
    }

    /// Events with `id > after`, oldest first, optionally for one user; at most `limit`.
    pub fn events(
        &self,
        user: Option<&UserId>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, ts, actor, action, user_id, outcome, detail FROM events
                 WHERE id > ?1 AND (?2 IS NULL OR user_id = ?2) ORDER BY id LIMIT ?3",
            )
            .map_err(db_err("read events"))?;
        let rows = stmt
            .query_map(params![after, user.map(UserId::as_str), limit], |r| {
                Ok(Event {
                    id: r.get(0)?,
                    ts: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    user_id: r.get(4)?,
                    outcome: if r.get::<_, String>(5)? == "ok" {
                        Outcome::Ok
                    } else {
                        Outcome::Error
                    },
                    detail: r.get(6)?,
                })
            })
            .map_err(db_err("read events"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(db_err("read events"))
    }

    /// Records (inserts or replaces) the worker of `record.user_id`. For the lifecycle manager.
    pub fn record_worker(&self, record: &WorkerRecord) -> Result<(), Error> {
        let conn = self.lock();
        conn.prepare_cached(
            "INSERT INTO workers (user_id, pid, pid_start_time, cgroup, state, restarts, diagnosis_json, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (user_id) DO UPDATE SET pid = ?2, pid_start_time = ?3, cgroup = ?4, state = ?5, restarts = ?6,
                 diagnosis_json = ?7, updated_at = ?8",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                record.user_id.as_str(),
                record.pid,
                record.pid_start_time.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
                record.cgroup,
                record.state,
                record.restarts,
                record.diagnosis_json,
                now(),
            ])
        })
        .map_err(db_err("record a worker"))?;
        Ok(())
    }

    /// The recorded worker of one user.
    pub fn worker(&self, user: &UserId) -> Result<Option<WorkerRecord>, Error> {
        let conn = self.lock();
        conn.prepare_cached(&format!(
            "SELECT {WORKER_COLUMNS} FROM workers WHERE user_id = ?1"
        ))
        .and_then(|mut stmt| stmt.query_row([user.as_str()], worker_from_row).optional())
        .map_err(db_err("read a worker"))
    }

    /// Every recorded worker (for re-adoption at start).
    pub fn workers(&self) -> Result<Vec<WorkerRecord>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {WORKER_COLUMNS} FROM workers ORDER BY user_id"
            ))
            .map_err(db_err("list workers"))?;
        let rows = stmt
            .query_map([], worker_from_row)
            .map_err(db_err("list workers"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(db_err("list workers"))
    }

    /// Marks a member active or suspended (webhook suspend / unsuspend). A suspended member keeps its data and row
    /// but gets no worker and no route.
    pub fn set_status(&self, id: &UserId, status: UserStatus) -> Result<(), Error> {
        let conn = self.lock();
        let n = conn
            .execute(
                "UPDATE users SET status = ?2, updated_at = ?3 WHERE id = ?1 AND status != 'provisioning'",
                params![id.as_str(), status.as_str(), now()],
            )
            .map_err(db_err("set a user's status"))?;
        if n == 0 {
            return Err(Error::UserNotFound { user: id.clone() });
        }
        Ok(())
    }

    /// Forgets the worker of one user (it has stopped for good).
    pub fn clear_worker(&self, user: &UserId) -> Result<(), Error> {
        let conn = self.lock();
        conn.execute("DELETE FROM workers WHERE user_id = ?1", [user.as_str()])
            .map_err(db_err("clear a worker"))?;
        Ok(())
    }

    /// A member's ritual settings (all `None` when never set).
    pub fn schedule(&self, user: &UserId) -> Result<provisioning::MemberSchedule, Error> {
        let conn = self.lock();
        let row: Option<(Option<String>, Option<String>, Option<String>)> = conn
            .prepare_cached(
                "SELECT timezone, standup, reflection FROM schedules WHERE user_id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row([user.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(db_err("read a schedule"))?;
        let (tz, standup, reflection) = row.unwrap_or_default();
        // Stored only after validation; a row that no longer parses (tz database change) counts as unset.
        Ok(provisioning::MemberSchedule::parse(
            tz.as_deref(),
            standup.as_deref(),
            reflection.as_deref(),
        )
        .unwrap_or_default())
    }

    /// Stores a member's (validated) ritual settings.
    pub fn set_schedule(
        &self,
        user: &UserId,
        schedule: &provisioning::MemberSchedule,
    ) -> Result<(), Error> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO schedules (user_id, timezone, standup, reflection) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user_id) DO UPDATE SET timezone = ?2, standup = ?3, reflection = ?4",
            params![
                user.as_str(),
                schedule.timezone(),
                schedule.standup(),
                schedule.reflection()
            ],
        )
        .map_err(db_err("store a schedule"))?;
        Ok(())
    }

    /// Every shard with its recorded worker, by shard number.
    pub fn shards(&self) -> Result<Vec<ShardRow>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT s.shard, s.port, s.pid, s.pid_start_time, s.cgroup, s.state, s.restarts, s.diagnosis_json,
                        s.updated_at, (SELECT COUNT(*) FROM shard_members m WHERE m.shard = s.shard)
                 FROM shards s ORDER BY s.shard",
            )
            .map_err(db_err("list shards"))?;
        let rows = stmt
            .query_map([], shard_from_row)
            .map_err(db_err("list shards"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(db_err("list shards"))
    }

    /// The members each shard hosts, ordered by shard then member id.
    pub fn shard_members(&self) -> Result<Vec<(UserId, u32)>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT user_id, shard FROM shard_members ORDER BY shard, user_id")
            .map_err(db_err("list shard members"))?;
        let rows = stmt
            .query_map([], |r| Ok((parse_column(r, 0)?, r.get(1)?)))
            .map_err(db_err("list shard members"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(db_err("list shard members"))
    }

    /// Records a shard worker's lifecycle state (what re-adoption reads), like [`Registry::record_worker`].
    pub fn record_shard_worker(&self, shard: u32, record: &WorkerRecord) -> Result<(), Error> {
        let conn = self.lock();
        conn.prepare_cached(
            "UPDATE shards SET pid = ?2, pid_start_time = ?3, cgroup = ?4, state = ?5, restarts = ?6,
                 diagnosis_json = ?7, updated_at = ?8 WHERE shard = ?1",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                shard,
                record.pid,
                record.pid_start_time.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
                record.cgroup,
                record.state,
                record.restarts,
                record.diagnosis_json,
                now(),
            ])
        })
        .map_err(db_err("record a shard worker"))?;
        Ok(())
    }

    /// Every binding (for the proxy's routing table).
    pub fn bindings(&self) -> Result<Vec<BindingRow>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT user_id, kind, value FROM bindings ORDER BY id")
            .map_err(db_err("list bindings"))?;
        let rows = stmt
            .query_map([], binding_from_row)
            .map_err(db_err("list bindings"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(db_err("list bindings"))
    }
}

/// An open registry transaction with typed operations. Dropped without commit = rolled back.
#[derive(Debug)]
pub struct Tx<'c> {
    tx: rusqlite::Transaction<'c>,
}

const USER_COLUMNS: &str = "id, tier, status, uid, gid, port, email, display_name, token_hash, seq, created_at, updated_at, runtime";
const WORKER_COLUMNS: &str =
    "user_id, pid, pid_start_time, cgroup, state, restarts, diagnosis_json, updated_at";

impl Tx<'_> {
    /// One user by id.
    pub fn user(&self, id: &UserId) -> Result<Option<UserRow>, Error> {
        self.tx
            .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))
            .and_then(|mut stmt| stmt.query_row([id.as_str()], user_from_row).optional())
            .map_err(db_err("read a user"))
    }

    /// Inserts a user, allocating its uid (when `uids` is given, i.e. as root) and, for dedicated members, its port.
    pub fn insert_user(
        &self,
        new: &NewUser,
        uids: Option<UidRange>,
        ports: PortRange,
    ) -> Result<UserRow, Error> {
        if self.user(&new.id)?.is_some() {
            return Err(Error::UserExists {
                user: new.id.clone(),
            });
        }
        let uid = uids.map(|range| self.allocate_uid(range)).transpose()?;
        let port = match new.tier {
            Tier::Dedicated => Some(self.allocate_port(ports)?),
            Tier::Shared => None,
        };
        let ts = now();
        self.tx
            .prepare_cached(
                "INSERT INTO users (id, tier, status, uid, gid, port, email, display_name, token_hash, seq, created_at, updated_at, runtime)
                 VALUES (?1, ?2, 'provisioning', ?3, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?8, ?9)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    new.id.as_str(),
                    new.tier.as_str(),
                    uid,
                    port,
                    new.email,
                    new.display_name,
                    new.token_hash,
                    ts,
                    new.runtime.map(crate::config::Runtime::as_str)
                ])
            })
            .map_err(db_err("insert a user"))?;
        self.user(&new.id)?.ok_or_else(|| Error::UserNotFound {
            user: new.id.clone(),
        })
    }

    /// Changes tier, email and display name; allocates a port when moving to dedicated and frees it when leaving.
    pub fn update_user(
        &self,
        id: &UserId,
        tier: Tier,
        email: Option<&str>,
        display_name: Option<&str>,
        ports: PortRange,
    ) -> Result<UserRow, Error> {
        let current = self
            .user(id)?
            .ok_or_else(|| Error::UserNotFound { user: id.clone() })?;
        let port = match (tier, current.port) {
            (Tier::Dedicated, Some(port)) => Some(port),
            (Tier::Dedicated, None) => Some(self.allocate_port(ports)?),
            (Tier::Shared, _) => None,
        };
        self.tx
            .execute(
                "UPDATE users SET tier = ?2, port = ?3, email = ?4, display_name = ?5, updated_at = ?6 WHERE id = ?1",
                params![id.as_str(), tier.as_str(), port, email, display_name, now()],
            )
            .map_err(db_err("update a user"))?;
        self.user(id)?
            .ok_or_else(|| Error::UserNotFound { user: id.clone() })
    }

    /// Sets (or, with `None`, clears) the member's own worker runtime.
    pub fn set_runtime(
        &self,
        id: &UserId,
        runtime: Option<crate::config::Runtime>,
    ) -> Result<(), Error> {
        let n = self
            .tx
            .execute(
                "UPDATE users SET runtime = ?2, updated_at = ?3 WHERE id = ?1",
                params![
                    id.as_str(),
                    runtime.map(crate::config::Runtime::as_str),
                    now()
                ],
            )
            .map_err(db_err("set a runtime"))?;
        if n == 0 {
            Err(Error::UserNotFound { user: id.clone() })
        } else {
            Ok(())
        }
    }

    /// Stores the hash of a new gateway token.
    pub fn set_token_hash(&self, id: &UserId, token_hash: &str) -> Result<(), Error> {
        let n = self
            .tx
            .execute(
                "UPDATE users SET token_hash = ?2, updated_at = ?3 WHERE id = ?1",
                params![id.as_str(), token_hash, now()],
            )
            .map_err(db_err("store a token hash"))?;
        if n == 0 {
            Err(Error::UserNotFound { user: id.clone() })
        } else {
            Ok(())
        }
    }

    /// Marks a user whose state directory is complete as active, storing its token hash.
    pub fn activate_user(&self, id: &UserId, token_hash: &str) -> Result<UserRow, Error> {
        let n = self
            .tx
            .execute(
                "UPDATE users SET status = 'active', token_hash = ?2, updated_at = ?3 WHERE id = ?1",
                params![id.as_str(), token_hash, now()],
            )
            .map_err(db_err("activate a user"))?;
        if n == 0 {
            return Err(Error::UserNotFound { user: id.clone() });
        }
        self.user(id)?
            .ok_or_else(|| Error::UserNotFound { user: id.clone() })
    }

    /// Deletes a user; its uid and port become free, its bindings and worker record go with it.
    pub fn delete_user(&self, id: &UserId) -> Result<UserRow, Error> {
        let row = self
            .user(id)?
            .ok_or_else(|| Error::UserNotFound { user: id.clone() })?;
        self.tx
            .execute("DELETE FROM users WHERE id = ?1", [id.as_str()])
            .map_err(db_err("delete a user"))?;
        Ok(row)
    }

    /// Adds a binding; a `(kind, value)` already bound to anyone is a conflict.
    pub fn add_binding(&self, user: &UserId, kind: BindingKind, value: &str) -> Result<(), Error> {
        let taken: Option<String> = self
            .tx
            .query_row(
                "SELECT user_id FROM bindings WHERE kind = ?1 AND value = ?2",
                params![kind.as_str(), value],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err("check a binding"))?;
        if taken.is_some() {
            return Err(Error::BindingTaken {
                kind: kind.as_str(),
                value: value.to_owned(),
            });
        }
        self.tx
            .execute(
                "INSERT INTO bindings (user_id, kind, value) VALUES (?1, ?2, ?3)",
                params![user.as_str(), kind.as_str(), value],
            )
            .map_err(db_err("add a binding"))?;
        Ok(())
    }

    /// Removes one binding; returns whether it existed.
    pub fn remove_binding(&self, kind: BindingKind, value: &str) -> Result<bool, Error> {
        let n = self
            .tx
            .execute(
                "DELETE FROM bindings WHERE kind = ?1 AND value = ?2",
                params![kind.as_str(), value],
            )
            .map_err(db_err("remove a binding"))?;
        Ok(n > 0)
    }

    /// Appends one audit event inside this transaction.
    pub fn append_event(
        &self,
        actor: &str,
        action: &str,
        user_id: Option<&str>,
        outcome: Outcome,
        detail: Option<&str>,
    ) -> Result<i64, Error> {
        let outcome = match outcome {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        };
        self.tx
            .prepare_cached("INSERT INTO events (ts, actor, action, user_id, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
            .and_then(|mut stmt| stmt.execute(params![now(), actor, action, user_id, outcome, detail]))
            .map_err(db_err("append an event"))?;
        Ok(self.tx.last_insert_rowid())
    }

    /// The lowest uid of `range` no user holds.
    fn allocate_uid(&self, range: UidRange) -> Result<u32, Error> {
        let first_free: Option<i64> = self
            .tx
            .query_row(
                "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM users WHERE uid = ?1) THEN ?1
                        ELSE (SELECT MIN(u.uid + 1) FROM users u WHERE u.uid >= ?1 AND u.uid < ?2
                              AND NOT EXISTS (SELECT 1 FROM users v WHERE v.uid = u.uid + 1)) END",
                params![range.first, range.last],
                |r| r.get(0),
            )
            .map_err(db_err("allocate a uid"))?;
        first_free
            .and_then(|uid| u32::try_from(uid).ok())
            .filter(|uid| (range.first..=range.last).contains(uid))
            .ok_or(Error::UidsExhausted {
                first: range.first,
                last: range.last,
            })
    }

    /// The lowest port `first + k * spacing` (≤ last) no user holds.
    /// Places a shared member on a shard: where it already is, else the lowest-numbered shard with room (fewer than
    /// `max_agents` members), else a new shard with a freshly allocated port. Returns the shard and whether it is new.
    pub fn assign_shard(
        &self,
        user: &UserId,
        max_agents: u32,
        ports: PortRange,
    ) -> Result<(u32, bool), Error> {
        let existing: Option<u32> = self
            .tx
            .query_row(
                "SELECT shard FROM shard_members WHERE user_id = ?1",
                [user.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err("read a shard member"))?;
        if let Some(shard) = existing {
            return Ok((shard, false));
        }
        let with_room: Option<u32> = self
            .tx
            .query_row(
                "SELECT s.shard FROM shards s
                 WHERE (SELECT COUNT(*) FROM shard_members m WHERE m.shard = s.shard) < ?1
                 ORDER BY s.shard LIMIT 1",
                [max_agents],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err("find a shard with room"))?;
        let (shard, created) = match with_room {
            Some(shard) => (shard, false),
            None => {
                let next: u32 = self
                    .tx
                    .query_row("SELECT COALESCE(MAX(shard) + 1, 0) FROM shards", [], |r| {
                        r.get(0)
                    })
                    .map_err(db_err("number a new shard"))?;
                let port = self.allocate_port(ports)?;
                self.tx
                    .execute(
                        "INSERT INTO shards (shard, port, updated_at) VALUES (?1, ?2, ?3)",
                        params![next, port, now()],
                    )
                    .map_err(db_err("create a shard"))?;
                (next, true)
            }
        };
        self.tx
            .execute(
                "INSERT INTO shard_members (user_id, shard) VALUES (?1, ?2)",
                params![user.as_str(), shard],
            )
            .map_err(db_err("assign a shard"))?;
        Ok((shard, created))
    }

    /// Takes a member off its shard; returns the shard it was on, if any.
    pub fn unassign_shard(&self, user: &UserId) -> Result<Option<u32>, Error> {
        let shard: Option<u32> = self
            .tx
            .query_row(
                "DELETE FROM shard_members WHERE user_id = ?1 RETURNING shard",
                [user.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err("unassign a shard"))?;
        Ok(shard)
    }

    fn allocate_port(&self, range: PortRange) -> Result<u16, Error> {
        let first_free: Option<i64> = self
            .tx
            .query_row(
                "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM used_ports WHERE port = ?1) THEN ?1
                        ELSE (SELECT MIN(u.port + ?3) FROM used_ports u WHERE u.port >= ?1 AND u.port + ?3 <= ?2
                              AND (u.port - ?1) % ?3 = 0
                              AND NOT EXISTS (SELECT 1 FROM used_ports v WHERE v.port = u.port + ?3)) END",
                params![range.first, range.last, range.spacing],
                |r| r.get(0),
            )
            .map_err(db_err("allocate a port"))?;
        first_free
            .and_then(|port| u16::try_from(port).ok())
            .filter(|port| (range.first..=range.last).contains(port))
            .ok_or(Error::PortsExhausted {
                first: range.first,
                last: range.last,
            })
    }
}

fn parse_column<T: FromStr>(row: &Row<'_>, index: usize) -> rusqlite::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = row.get(index)?;
    text.parse::<T>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn user_from_row(r: &Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        id: parse_column(r, 0)?,
        tier: parse_column(r, 1)?,
        status: match r.get::<_, String>(2)?.as_str() {
            "provisioning" => UserStatus::Provisioning,
            "suspended" => UserStatus::Suspended,
            _ => UserStatus::Active,
        },
        uid: r.get(3)?,
        gid: r.get(4)?,
        port: r.get(5)?,
        email: r.get(6)?,
        display_name: r.get(7)?,
        token_hash: r.get(8)?,
        seq: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
        runtime: r
            .get::<_, Option<String>>(12)?
            .map(|s| {
                s.parse().map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        12,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })
            })
            .transpose()?,
    })
}

fn shard_from_row(r: &Row<'_>) -> rusqlite::Result<ShardRow> {
    Ok(ShardRow {
        shard: r.get(0)?,
        port: r.get(1)?,
        pid: r.get(2)?,
        pid_start_time: r
            .get::<_, Option<i64>>(3)?
            .and_then(|t| u64::try_from(t).ok()),
        cgroup: r.get(4)?,
        state: r.get(5)?,
        restarts: r.get(6)?,
        diagnosis_json: r.get(7)?,
        updated_at: r.get(8)?,
        members: r.get(9)?,
    })
}

fn worker_from_row(r: &Row<'_>) -> rusqlite::Result<WorkerRecord> {
    Ok(WorkerRecord {
        user_id: parse_column(r, 0)?,
        pid: r.get(1)?,
        pid_start_time: r
            .get::<_, Option<i64>>(2)?
            .and_then(|t| u64::try_from(t).ok()),
        cgroup: r.get(3)?,
        state: r.get(4)?,
        restarts: r.get(5)?,
        diagnosis_json: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

fn binding_from_row(r: &Row<'_>) -> rusqlite::Result<BindingRow> {
    let kind = match r.get::<_, String>(1)?.as_str() {
        "host" => BindingKind::Host,
        "path" => BindingKind::Path,
        _ => BindingKind::Token,
    };
    Ok(BindingRow {
        user_id: parse_column(r, 0)?,
        kind,
        value: r.get(2)?,
    })
}

/// Runs every migration past `PRAGMA user_version`, each in its own transaction with the version bump.
fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_err("read user_version"))?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(Error::RegistryTooNew {
            found: version,
            known,
        });
    }
    for (index, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        let tx = conn.transaction().map_err(db_err("begin a migration"))?;
        tx.execute_batch(sql).map_err(db_err("run a migration"))?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(index + 1).unwrap_or(i64::MAX),
        )
        .map_err(db_err("bump user_version"))?;
        tx.commit().map_err(db_err("commit a migration"))?;
    }
    Ok(())
}

/// Hex SHA-256 of a token, as stored in `users.token_hash`.
pub fn token_hash(token: &provisioning::Secret) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(token.expose().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: PortRange = PortRange {
        first: 20_000,
        last: 20_059,
        spacing: 20,
    };
    const UIDS: UidRange = UidRange {
        first: 1000,
        last: 1002,
    };

    fn new_user(id: &str, tier: Tier) -> NewUser {
        NewUser {
            id: id.parse().unwrap(),
            tier,
            email: None,
            display_name: None,
            token_hash: "h".into(),
            runtime: None,
        }
    }

    fn open() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("wirebot.db")).unwrap();
        (dir, reg)
    }

    #[test]
    fn allocation_fills_gaps_and_frees_on_delete() {
        let (_dir, reg) = open();
        let add = |id: &str| {
            reg.transaction(|tx| tx.insert_user(&new_user(id, Tier::Dedicated), Some(UIDS), PORTS))
        };
        let a = add("a").unwrap();
        let b = add("b").unwrap();
        let c = add("c").unwrap();
        assert_eq!((a.uid, a.port), (Some(1000), Some(20_000)));
        assert_eq!((b.uid, b.port), (Some(1001), Some(20_020)));
        assert_eq!((c.uid, c.port), (Some(1002), Some(20_040)));
        assert!(matches!(add("d"), Err(Error::UidsExhausted { .. })));
        reg.transaction(|tx| tx.delete_user(&"b".parse().unwrap()))
            .unwrap();
        let d = add("d").unwrap();
        assert_eq!((d.uid, d.port), (Some(1001), Some(20_020)));
        assert!(matches!(add("a"), Err(Error::UserExists { .. })));
    }

    #[test]
    fn shared_users_get_no_port_and_tier_moves_allocate_and_free() {
        let (_dir, reg) = open();
        let s = reg
            .transaction(|tx| tx.insert_user(&new_user("s", Tier::Shared), None, PORTS))
            .unwrap();
        assert_eq!((s.uid, s.port), (None, None));
        let id: UserId = "s".parse().unwrap();
        let moved = reg
            .transaction(|tx| tx.update_user(&id, Tier::Dedicated, None, None, PORTS))
            .unwrap();
        assert_eq!(moved.port, Some(20_000));
        let back = reg
            .transaction(|tx| tx.update_user(&id, Tier::Shared, None, None, PORTS))
            .unwrap();
        assert_eq!(back.port, None);
    }

    #[test]
    fn every_migration_runs_once_including_the_webhook_tables() {
        let (dir, reg) = open();
        let version: i64 = reg
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, i64::try_from(MIGRATIONS.len()).unwrap());
        let tables: i64 = reg
            .lock()
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name LIKE 'webhook_%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(tables >= 2, "webhook tables missing");
        drop(reg);
        // Reopening runs nothing again (a second CREATE TABLE users would fail).
        Registry::open(&dir.path().join("wirebot.db")).unwrap();
    }

    #[test]
    fn events_are_append_only() {
        let (_dir, reg) = open();
        reg.append_event("cli", "user.create", Some("a"), Outcome::Ok, None)
            .unwrap();
        let conn = reg.lock();
        assert!(conn.execute("UPDATE events SET actor = 'x'", []).is_err());
        assert!(conn.execute("DELETE FROM events", []).is_err());
        drop(conn);
        assert_eq!(reg.events(None, 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn workers_round_trip_and_reopen_keeps_schema() {
        let (dir, reg) = open();
        reg.transaction(|tx| tx.insert_user(&new_user("w", Tier::Dedicated), None, PORTS))
            .unwrap();
        let id: UserId = "w".parse().unwrap();
        let rec = WorkerRecord {
            user_id: id.clone(),
            pid: Some(42),
            pid_start_time: Some(123),
            cgroup: Some("/x".into()),
            state: "running".into(),
            restarts: 1,
            diagnosis_json: None,
            updated_at: String::new(),
        };
        reg.record_worker(&rec).unwrap();
        assert_eq!(reg.worker(&id).unwrap().unwrap().pid, Some(42));
        reg.clear_worker(&id).unwrap();
        assert_eq!(reg.worker(&id).unwrap(), None);
        drop(reg);
        let again = Registry::open(&dir.path().join("wirebot.db")).unwrap();
        assert_eq!(again.users().unwrap().len(), 1);
    }
}
