//! Durable webhook state in SQLite: the dedup table, the `(site, wp_user_id)` → `UserId` map with `last_applied_seq`,
//! desired states, tombstones and reconcile operations. `apply` runs steps 5–8 of the receiver algorithm in one
//! IMMEDIATE transaction, so a rejected delivery changes nothing. The reconciler's side (claim/finish) lives here too.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Error;
use super::payload::{DesiredState, Event, EventBody, MemberState, Status, Tier};
use provisioning::UserId;

/// How long a `webhook-id` is remembered: the sender's 3-day retry horizon plus slack.
pub const DEDUP_RETENTION_SECS: i64 = 7 * 24 * 3600;

/// The webhook tables. Idempotent (`IF NOT EXISTS`); the registry appends it to its embedded migrations.
pub const MIGRATION: &str = r#"
CREATE TABLE IF NOT EXISTS webhook_dedup (
    webhook_id    TEXT PRIMARY KEY,
    body_sha256   BLOB NOT NULL,
    status        INTEGER NOT NULL,
    response_json TEXT NOT NULL,
    received_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS webhook_dedup_received_at ON webhook_dedup(received_at);
CREATE TABLE IF NOT EXISTS webhook_members (
    site             TEXT NOT NULL,
    wp_user_id       INTEGER NOT NULL,
    user_id          TEXT NOT NULL UNIQUE,
    ring_leader_id   TEXT,
    email            TEXT,
    display_name     TEXT,
    last_applied_seq INTEGER NOT NULL,
    first_seen_at    INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (site, wp_user_id)
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS webhook_members_ring_leader
    ON webhook_members(site, ring_leader_id) WHERE ring_leader_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS webhook_desired (
    user_id    TEXT PRIMARY KEY,
    status     TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'deleted')),
    tier       TEXT NOT NULL CHECK (tier IN ('shared', 'dedicated', 'none')),
    seq        INTEGER NOT NULL,
    event_id   TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS webhook_tombstones (
    site       TEXT NOT NULL,
    wp_user_id INTEGER NOT NULL,
    user_id    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    deleted_at INTEGER NOT NULL,
    PRIMARY KEY (site, wp_user_id)
) STRICT;
CREATE TABLE IF NOT EXISTS webhook_operations (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    status     TEXT NOT NULL,
    tier       TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'superseded')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS webhook_operations_user ON webhook_operations(user_id, created_at);
"#;

/// A reconcile operation id (UUID v7: time-ordered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperationId(pub uuid::Uuid);

impl std::str::FromStr for OperationId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(OperationId)
    }
}

impl std::fmt::Display for OperationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What the receiver hands to the reconciler for every accepted desired state (over the daemon's mpsc channel).
/// The desired state is already durable; a lost request is recovered by `Store::pending_operations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileRequest {
    pub operation_id: OperationId,
    pub user_id: UserId,
    pub desired: DesiredState,
}

/// An operation whose last attempt failed (`wirebot status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedOperation {
    pub id: String,
    pub user_id: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Unix seconds of the last attempt.
    pub updated_at: i64,
}

/// An operation still to converge, as a restarted reconciler finds it: the request, how many attempts it already had,
/// and when its next attempt is due (unix seconds; `None` = at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingOperation {
    pub request: ReconcileRequest,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
}

/// One reconcile operation as `wirebot op show` and `GET /v1/operations/{id}` report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Operation {
    pub id: String,
    pub user_id: String,
    /// The webhook delivery (`webhook-id`) that asked for it.
    pub event_id: String,
    /// The desired state it converges to.
    pub status: String,
    pub tier: String,
    pub seq: i64,
    /// `queued`, `running`, `done`, `failed` or `superseded`.
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Unix seconds of the next attempt of a failed operation (absent once it has given up).
    pub next_attempt_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

const OPERATION_COLUMNS: &str = "id, user_id, event_id, status, tier, seq, state, attempts, last_error, \
     next_attempt_at, created_at, updated_at";

fn operation_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Operation> {
    Ok(Operation {
        id: r.get(0)?,
        user_id: r.get(1)?,
        event_id: r.get(2)?,
        status: r.get(3)?,
        tier: r.get(4)?,
        seq: r.get(5)?,
        state: r.get(6)?,
        attempts: r.get(7)?,
        last_error: r.get(8)?,
        next_attempt_at: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

/// Adds `webhook_operations.next_attempt_at` (the persisted retry schedule) to stores created before it existed.
/// Checked by name, so it runs once whatever opened the file first.
fn add_next_attempt_column(conn: &Connection) -> rusqlite::Result<()> {
    let present: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('webhook_operations') WHERE name = 'next_attempt_at'",
        [],
        |r| r.get(0),
    )?;
    if !present {
        conn.execute_batch("ALTER TABLE webhook_operations ADD COLUMN next_attempt_at INTEGER")?;
    }
    Ok(())
}

/// A verified, validated delivery ready for steps 5–8.
#[derive(Debug)]
pub struct Delivery<'a> {
    pub webhook_id: &'a str,
    pub body: &'a [u8],
    pub event: &'a Event,
    /// Unix seconds.
    pub now: i64,
}

/// The answer to a delivery: HTTP status, JSON body, and the reconcile requests to send after commit.
#[derive(Debug)]
pub struct Applied {
    pub status: u16,
    pub response: Value,
    pub requests: Vec<ReconcileRequest>,
    /// True when the answer was replayed from the dedup table.
    pub replayed: bool,
}

/// The per-member result of steps 6–8.
enum MemberOutcome {
    Stale {
        user_id: UserId,
    },
    Applied {
        user_id: UserId,
    },
    Accepted {
        user_id: UserId,
        request: ReconcileRequest,
    },
}

/// The webhook store: one SQLite connection behind a mutex (callers run it on a blocking thread).
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (or creates) the SQLite file, sets WAL and a short busy timeout, and applies `MIGRATION`.
    pub fn open(path: &Path) -> Result<Store, Error> {
        let open_err = |source| Error::StoreOpen {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_millis(250))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.execute_batch(MIGRATION).map_err(open_err)?;
        add_next_attempt_column(&conn).map_err(open_err)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn with_tx<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        // A panic while holding the lock leaves no open transaction (rusqlite rolls back on drop), so a poisoned
        // mutex still guards a consistent connection.
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let mut tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(Error::store("begin"))?;
        let value = f(&mut tx)?;
        tx.commit().map_err(Error::store("commit"))?;
        Ok(value)
    }

    /// Steps 5–8 for one delivery, atomically: dedup, stale `seq`, identity, then persist and enqueue.
    /// Any `Err` leaves every table as it was.
    pub fn apply(&self, delivery: &Delivery<'_>) -> Result<Applied, Error> {
        let hash: [u8; 32] = Sha256::digest(delivery.body).into();
        self.with_tx(|tx| {
            let seen: Option<(Vec<u8>, i64, String)> = tx
                .query_row(
                    "SELECT body_sha256, status, response_json FROM webhook_dedup WHERE webhook_id = ?1",
                    [delivery.webhook_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(Error::store("read dedup"))?;
            if let Some((seen_hash, status, response)) = seen {
                if seen_hash != hash {
                    return Err(Error::IdempotencyKeyReused { webhook_id: delivery.webhook_id.to_owned() });
                }
                let response = serde_json::from_str(&response).unwrap_or(Value::Null);
                let status = u16::try_from(status).unwrap_or(200);
                return Ok(Applied { status, response, requests: Vec::new(), replayed: true });
            }
            let event = delivery.event;
            let event_id = delivery.webhook_id;
            let (status, response, requests) = match &event.body {
                EventBody::Test => (200, json!({"status": "ok", "event_id": event_id, "site": event.site}), Vec::new()),
                EventBody::Member { member, .. } => match apply_member(tx, &event.site, member, event_id, delivery.now)? {
                    MemberOutcome::Stale { user_id } => {
                        (200, json!({"status": "stale_ignored", "event_id": event_id, "user_id": user_id}), Vec::new())
                    }
                    MemberOutcome::Applied { user_id } => {
                        (200, json!({"status": "applied", "event_id": event_id, "user_id": user_id}), Vec::new())
                    }
                    MemberOutcome::Accepted { user_id, request } => (
                        202,
                        json!({"status": "accepted", "event_id": event_id, "user_id": user_id,
                               "operation_id": request.operation_id.to_string()}),
                        vec![request],
                    ),
                },
                EventBody::Sync { members } => {
                    let mut results = Vec::with_capacity(members.len());
                    let mut requests = Vec::new();
                    for member in members {
                        let wp_user_id = member.user.wp_user_id;
                        // A conflicting member must not block the other 199 of a repair sweep: report it in place.
                        let savepoint = tx.savepoint_with_name("member").map_err(Error::store("savepoint"))?;
                        let outcome = apply_member(&savepoint, &event.site, member, event_id, delivery.now);
                        let result = match outcome {
                            Ok(MemberOutcome::Stale { user_id }) => {
                                json!({"wp_user_id": wp_user_id, "user_id": user_id, "status": "stale_ignored"})
                            }
                            Ok(MemberOutcome::Applied { user_id }) => {
                                json!({"wp_user_id": wp_user_id, "user_id": user_id, "status": "applied"})
                            }
                            Ok(MemberOutcome::Accepted { user_id, request }) => {
                                let op = request.operation_id.to_string();
                                requests.push(request);
                                json!({"wp_user_id": wp_user_id, "user_id": user_id, "status": "accepted", "operation_id": op})
                            }
                            Err(Error::IdentityConflict { reason, .. }) => {
                                // Dropping the savepoint without commit rolls back this member's writes.
                                drop(savepoint);
                                results.push(json!({"wp_user_id": wp_user_id, "status": "identity_conflict", "detail": reason}));
                                continue;
                            }
                            Err(other) => return Err(other),
                        };
                        savepoint.commit().map_err(Error::store("release savepoint"))?;
                        results.push(result);
                    }
                    let status = if requests.is_empty() { 200 } else { 202 };
                    let summary = if requests.is_empty() { "applied" } else { "accepted" };
                    (status, json!({"status": summary, "event_id": event_id, "members": results}), requests)
                }
            };
            tx.execute(
                "INSERT INTO webhook_dedup (webhook_id, body_sha256, status, response_json, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![delivery.webhook_id, hash.as_slice(), status, response.to_string(), delivery.now],
            )
            .map_err(Error::store("record dedup"))?;
            Ok(Applied { status, response, requests, replayed: false })
        })
    }

    /// Forgets `webhook-id`s older than `DEDUP_RETENTION_SECS`; returns how many were removed.
    pub fn purge_dedup(&self, now: i64) -> Result<usize, Error> {
        self.with_tx(|tx| {
            tx.execute(
                "DELETE FROM webhook_dedup WHERE received_at < ?1",
                [now - DEDUP_RETENTION_SECS],
            )
            .map_err(Error::store("purge dedup"))
        })
    }

    /// The newest queued, running or failed operation per user whose desired state still needs converging, with its
    /// attempts so far and its persisted next attempt: what a reconciler re-drives on start-up and on its periodic sweep
    /// (a request lost on a full channel is found here).
    pub fn pending_operations(&self) -> Result<Vec<PendingOperation>, Error> {
        self.with_tx(|tx| {
            let mut stmt = tx
                .prepare(
                    "SELECT o.id, o.user_id, d.status, d.tier, o.attempts, o.next_attempt_at FROM webhook_operations o
                     JOIN webhook_desired d ON d.user_id = o.user_id
                     WHERE o.state IN ('queued', 'running', 'failed')
                       AND o.created_at = (SELECT MAX(created_at) FROM webhook_operations WHERE user_id = o.user_id)
                     ORDER BY o.id",
                )
                .map_err(Error::store("list pending operations"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, u32>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                    ))
                })
                .map_err(Error::store("list pending operations"))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, user_id, status, tier, attempts, next_attempt_at) =
                    row.map_err(Error::store("list pending operations"))?;
                if let Some(request) = request_from_row(&id, &user_id, &status, &tier) {
                    out.push(PendingOperation { request, attempts, next_attempt_at });
                }
            }
            Ok(out)
        })
    }

    /// One operation by id (`None` when unknown).
    pub fn operation(&self, id: OperationId) -> Result<Option<Operation>, Error> {
        self.with_tx(|tx| {
            tx.query_row(
                &format!("SELECT {OPERATION_COLUMNS} FROM webhook_operations WHERE id = ?1"),
                [id.to_string()],
                operation_from_row,
            )
            .optional()
            .map_err(Error::store("read operation"))
        })
    }

    /// The newest `limit` operations, of one user or of all, newest first.
    pub fn operations(&self, user: Option<&UserId>, limit: u32) -> Result<Vec<Operation>, Error> {
        self.with_tx(|tx| {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {OPERATION_COLUMNS} FROM webhook_operations
                     WHERE ?1 IS NULL OR user_id = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2"
                ))
                .map_err(Error::store("list operations"))?;
            let rows = stmt
                .query_map(
                    params![user.map(ToString::to_string), limit],
                    operation_from_row,
                )
                .map_err(Error::store("list operations"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(Error::store("list operations"))
        })
    }

    /// Marks an operation running (attempts + 1). Returns false when it was superseded or already finished, in which
    /// case the reconciler skips it: a later operation for the same user carries the newer desired state.
    pub fn start_operation(&self, id: OperationId, now: i64) -> Result<bool, Error> {
        self.with_tx(|tx| {
            let changed = tx
                .execute(
                    "UPDATE webhook_operations SET state = 'running', attempts = attempts + 1, next_attempt_at = NULL, updated_at = ?2
                     WHERE id = ?1 AND state IN ('queued', 'failed')",
                    params![id.to_string(), now],
                )
                .map_err(Error::store("start operation"))?;
            Ok(changed == 1)
        })
    }

    /// Records the outcome of an operation: `done`, or `failed` with its error (shown by `wirebot status`) and the unix
    /// second of its next attempt (`None`: given up), persisted so a restarted daemon keeps the back-off.
    pub fn finish_operation(
        &self,
        id: OperationId,
        outcome: Result<(), &str>,
        next_attempt_at: Option<i64>,
        now: i64,
    ) -> Result<(), Error> {
        let (state, error) = match outcome {
            Ok(()) => ("done", None),
            Err(e) => ("failed", Some(e)),
        };
        self.with_tx(|tx| {
            tx.execute(
                "UPDATE webhook_operations SET state = ?2, last_error = ?3, next_attempt_at = ?4, updated_at = ?5
                 WHERE id = ?1",
                params![id.to_string(), state, error, next_attempt_at.filter(|_| error.is_some()), now],
            )
            .map_err(Error::store("finish operation"))?;
            Ok(())
        })
    }

    /// How many operations failed their last attempt (being retried, or given up until the member's next desired
    /// state), and the newest `limit` of them: what `wirebot status` shows.
    pub fn failed_operations(&self, limit: u32) -> Result<(u64, Vec<FailedOperation>), Error> {
        self.with_tx(|tx| {
            let total: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM webhook_operations WHERE state = 'failed'",
                    [],
                    |r| r.get(0),
                )
                .map_err(Error::store("count failed operations"))?;
            let mut stmt = tx
                .prepare(
                    "SELECT id, user_id, attempts, last_error, updated_at FROM webhook_operations
                     WHERE state = 'failed' ORDER BY updated_at DESC, id DESC LIMIT ?1",
                )
                .map_err(Error::store("list failed operations"))?;
            let rows = stmt
                .query_map([limit], |r| {
                    Ok(FailedOperation {
                        id: r.get(0)?,
                        user_id: r.get(1)?,
                        attempts: r.get(2)?,
                        last_error: r.get(3)?,
                        updated_at: r.get(4)?,
                    })
                })
                .map_err(Error::store("list failed operations"))?;
            let recent = rows
                .collect::<Result<Vec<_>, _>>()
                .map_err(Error::store("list failed operations"))?;
            Ok((u64::try_from(total).unwrap_or(0), recent))
        })
    }

    /// Writes the tombstone of a deleted member once the reconciler has archived and removed their directory, so a
    /// late `member.created` is refused with 409. The `(site, wp_user_id)` → `UserId` mapping is kept (ids are never reused).
    pub fn write_tombstone(&self, user_id: &UserId, now: i64) -> Result<(), Error> {
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO webhook_tombstones (site, wp_user_id, user_id, seq, deleted_at)
                 SELECT site, wp_user_id, user_id, last_applied_seq, ?2 FROM webhook_members WHERE user_id = ?1
                 ON CONFLICT (site, wp_user_id) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                params![user_id.as_str(), now],
            )
            .map_err(Error::store("write tombstone"))?;
            Ok(())
        })
    }

    /// The stored desired state and `seq` of a member, if WordPress ever told us about them.
    pub fn desired(&self, user_id: &UserId) -> Result<Option<(DesiredState, u64)>, Error> {
        self.with_tx(|tx| read_desired(tx, user_id.as_str()))
    }
}

fn request_from_row(id: &str, user_id: &str, status: &str, tier: &str) -> Option<ReconcileRequest> {
    Some(ReconcileRequest {
        operation_id: OperationId(uuid::Uuid::parse_str(id).ok()?),
        user_id: user_id.parse().ok()?,
        desired: DesiredState {
            status: Status::parse(status)?,
            tier: Tier::parse(tier)?,
        },
    })
}

fn read_desired(tx: &Connection, user_id: &str) -> Result<Option<(DesiredState, u64)>, Error> {
    let row: Option<(String, String, i64)> = tx
        .query_row(
            "SELECT status, tier, seq FROM webhook_desired WHERE user_id = ?1",
            [user_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(Error::store("read desired state"))?;
    Ok(row.and_then(|(status, tier, seq)| {
        Some((
            DesiredState {
                status: Status::parse(&status)?,
                tier: Tier::parse(&tier)?,
            },
            u64::try_from(seq).ok()?,
        ))
    }))
}

fn conflict(user_id: &UserId, reason: &'static str) -> Error {
    Error::IdentityConflict {
        user_id: user_id.to_string(),
        reason,
    }
}

fn sql_int(v: u64) -> i64 {
    // payload validation caps ids and seqs at i64::MAX
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Steps 6–8 for one member inside the caller's transaction.
fn apply_member(
    tx: &Connection,
    site: &str,
    member: &MemberState,
    event_id: &str,
    now: i64,
) -> Result<MemberOutcome, Error> {
    let wp = sql_int(member.user.wp_user_id);
    let seq = sql_int(member.seq);
    let existing: Option<(String, Option<String>, i64)> = tx
        .query_row(
            "SELECT user_id, ring_leader_id, last_applied_seq FROM webhook_members WHERE site = ?1 AND wp_user_id = ?2",
            params![site, wp],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(Error::store("read member"))?;
    let tombstone: Option<i64> = tx
        .query_row(
            "SELECT seq FROM webhook_tombstones WHERE site = ?1 AND wp_user_id = ?2",
            params![site, wp],
            |r| r.get(0),
        )
        .optional()
        .map_err(Error::store("read tombstone"))?;
    let user_id: UserId = match &existing {
        Some((id, _, _)) => id.parse().map_err(|_| Error::Store {
            op: "read member",
            source: rusqlite::Error::InvalidColumnType(
                0,
                "user_id".into(),
                rusqlite::types::Type::Text,
            ),
        })?,
        None => derive_user_id(tx, site, member.user.wp_user_id)?,
    };

    // Step 6: order by seq (a tombstone keeps the seq of the deletion).
    let last_applied = existing
        .as_ref()
        .map_or(0, |e| e.2)
        .max(tombstone.unwrap_or(0));
    if seq <= last_applied {
        return Ok(MemberOutcome::Stale { user_id });
    }

    // Step 7: identity.
    let deleting = member.state.status == Status::Deleted;
    if tombstone.is_some() && !deleting {
        return Err(conflict(
            &user_id,
            "this WordPress user was deleted (tombstoned) and cannot come back",
        ));
    }
    let desired = read_desired(tx, user_id.as_str())?;
    if desired.is_some_and(|(d, _)| d.status == Status::Deleted) && !deleting {
        return Err(conflict(
            &user_id,
            "this WordPress user is being deleted and cannot come back",
        ));
    }
    if let (Some((_, Some(bound), _)), Some(sent)) = (&existing, &member.user.ring_leader_id)
        && bound != sent
    {
        return Err(conflict(
            &user_id,
            "wp_user_id is bound to another ring_leader_id",
        ));
    }
    if let Some(sent) = &member.user.ring_leader_id {
        let other: Option<i64> = tx
            .query_row(
                "SELECT wp_user_id FROM webhook_members WHERE site = ?1 AND ring_leader_id = ?2 AND wp_user_id <> ?3",
                params![site, sent, wp],
                |r| r.get(0),
            )
            .optional()
            .map_err(Error::store("read ring leader binding"))?;
        if other.is_some() {
            return Err(conflict(
                &user_id,
                "ring_leader_id is bound to another wp_user_id",
            ));
        }
    }

    // Step 8: persist the member, the desired state and (unless already converged) a reconcile operation.
    tx.execute(
        "INSERT INTO webhook_members
             (site, wp_user_id, user_id, ring_leader_id, email, display_name, last_applied_seq, first_seen_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
         ON CONFLICT (site, wp_user_id) DO UPDATE SET
             ring_leader_id = COALESCE(ring_leader_id, excluded.ring_leader_id),
             email = COALESCE(excluded.email, email),
             display_name = COALESCE(excluded.display_name, display_name),
             last_applied_seq = excluded.last_applied_seq,
             updated_at = excluded.updated_at",
        params![
            site,
            wp,
            user_id.as_str(),
            member.user.ring_leader_id,
            member.user.email,
            member.user.display_name,
            seq,
            now
        ],
    )
    .map_err(Error::store("write member"))?;
    tx.execute(
        "INSERT INTO webhook_desired (user_id, status, tier, seq, event_id, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (user_id) DO UPDATE SET status = excluded.status, tier = excluded.tier, seq = excluded.seq,
             event_id = excluded.event_id, updated_at = excluded.updated_at",
        params![user_id.as_str(), member.state.status.as_str(), member.state.tier.as_str(), seq, event_id, now],
    )
    .map_err(Error::store("write desired state"))?;

    if let Some(tomb_seq) = tombstone {
        // Already archived and removed: a later `deleted` only moves the tombstone's seq.
        tx.execute(
            "UPDATE webhook_tombstones SET seq = ?3 WHERE site = ?1 AND wp_user_id = ?2",
            params![site, wp, seq.max(tomb_seq)],
        )
        .map_err(Error::store("update tombstone"))?;
        return Ok(MemberOutcome::Applied { user_id });
    }
    if existing.is_none() && deleting {
        // Never provisioned: nothing to archive, so the tombstone can be written at once.
        tx.execute(
            "INSERT INTO webhook_tombstones (site, wp_user_id, user_id, seq, deleted_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![site, wp, user_id.as_str(), seq, now],
        )
        .map_err(Error::store("write tombstone"))?;
        return Ok(MemberOutcome::Applied { user_id });
    }
    let last_op_state: Option<String> = tx
        .query_row(
            "SELECT state FROM webhook_operations WHERE user_id = ?1 ORDER BY created_at DESC, id DESC LIMIT 1",
            [user_id.as_str()],
            |r| r.get(0),
        )
        .optional()
        .map_err(Error::store("read last operation"))?;
    if desired.is_some_and(|(d, _)| d == member.state) && last_op_state.as_deref() == Some("done") {
        return Ok(MemberOutcome::Applied { user_id });
    }
    // One operation in flight per user: a newer desired state supersedes operations not yet started.
    tx.execute(
        "UPDATE webhook_operations SET state = 'superseded', updated_at = ?2 WHERE user_id = ?1 AND state IN ('queued', 'failed')",
        params![user_id.as_str(), now],
    )
    .map_err(Error::store("supersede operations"))?;
    let operation_id = OperationId(uuid::Uuid::now_v7());
    tx.execute(
        "INSERT INTO webhook_operations (id, user_id, event_id, status, tier, seq, state, attempts, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', 0, ?7, ?7)",
        params![
            operation_id.to_string(),
            user_id.as_str(),
            event_id,
            member.state.status.as_str(),
            member.state.tier.as_str(),
            seq,
            now
        ],
    )
    .map_err(Error::store("enqueue operation"))?;
    let request = ReconcileRequest {
        operation_id,
        user_id: user_id.clone(),
        desired: member.state,
    };
    Ok(MemberOutcome::Accepted { user_id, request })
}

/// The `UserId` for a WordPress user seen for the first time: `wp<id>`, or `wp<id>-<site hash>` when another site
/// already holds `wp<id>`. Stored on first sight, so it never changes afterwards.
fn derive_user_id(tx: &Connection, site: &str, wp_user_id: u64) -> Result<UserId, Error> {
    let site_hash = hex::encode(&Sha256::digest(site.as_bytes())[..4]);
    let first = [
        format!("wp{wp_user_id}"),
        format!("wp{wp_user_id}-{site_hash}"),
    ];
    let more = (2..100).map(|n| format!("wp{wp_user_id}-{site_hash}-{n}"));
    for candidate in first.into_iter().chain(more) {
        let taken: bool = tx
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM webhook_members WHERE user_id = ?1)
                     OR EXISTS(SELECT 1 FROM webhook_tombstones WHERE user_id = ?1)",
                [&candidate],
                |r| r.get(0),
            )
            .map_err(Error::store("derive user id"))?;
        if !taken {
            // `wp` + digits + `-` + hex is always a valid UserId (at most 39 characters).
            return candidate.parse().map_err(|_| Error::Store {
                op: "derive user id",
                source: rusqlite::Error::InvalidParameterName(candidate.clone()),
            });
        }
    }
    Err(Error::Store {
        op: "derive user id",
        source: rusqlite::Error::QueryReturnedNoRows,
    })
}
