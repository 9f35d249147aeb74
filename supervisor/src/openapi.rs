//! The OpenAPI 3.1 document of the admin API, served at `GET /v1/openapi.json`. Hand-written; a unit test in `admin.rs`
//! checks it lists exactly the served routes, and an end-to-end test calls every operation it lists.

use serde_json::{Value, json};

/// `Status.reconcile`: webhook operations whose last attempt failed (its own function: one `json!` would be too deep).
fn reconcile_status() -> Value {
    let failure = json!({ "type": "object", "properties": {
        "id": { "type": "string" }, "user_id": { "type": "string" }, "attempts": { "type": "integer" },
        "last_error": { "type": ["string", "null"] }, "updated_at": { "type": "integer", "description": "Unix seconds" } } });
    json!({
        "type": ["object", "null"],
        "description": "Webhook operations whose last attempt failed, retried with back-off (null without webhooks)",
        "properties": {
            "failed": { "type": "integer" },
            "recent_failures": { "type": "array", "items": failure }
        }
    })
}

/// `Operation`: one webhook reconcile operation (its own function: one `json!` would be too deep).
fn operation_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "user_id", "event_id", "status", "tier", "seq", "state", "attempts", "created_at", "updated_at"],
        "properties": {
            "id": { "type": "string", "format": "uuid" }, "user_id": { "type": "string" },
            "event_id": { "type": "string", "description": "The webhook-id of the delivery that asked for it" },
            "status": { "type": "string", "enum": ["active", "suspended", "deleted"] },
            "tier": { "type": "string", "enum": ["shared", "dedicated", "none"] },
            "seq": { "type": "integer" },
            "state": { "type": "string", "enum": ["queued", "running", "done", "failed", "superseded"] },
            "attempts": { "type": "integer", "minimum": 0 },
            "last_error": { "type": ["string", "null"] },
            "next_attempt_at": { "type": ["integer", "null"], "description": "Unix seconds of the next retry of a failed operation" },
            "created_at": { "type": "integer" }, "updated_at": { "type": "integer" }
        }
    })
}

/// The `/v1/operations` paths (their own function: one `json!` would be too deep).
fn operation_paths() -> Value {
    json!({
            "/v1/operations": { "get": {
                "operationId": "listOperations", "summary": "Webhook reconcile operations, newest first (empty without a webhook receiver)",
                "parameters": [
                    { "name": "user", "in": "query", "schema": { "type": "string" } },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 50 } }
                ],
                "responses": merge(ok("200", "Operations", json!({ "type": "array", "items": schema_ref("Operation") })), problem_responses(&["400", "500"]))
            }},
            "/v1/operations/{id}": {
                "parameters": [{ "name": "id", "in": "path", "required": true, "description": "Operation id (UUID) from a webhook's 202 answer", "schema": { "type": "string", "format": "uuid" } }],
                "get": {
                    "operationId": "showOperation", "summary": "One webhook reconcile operation: state, attempts, last error, next attempt",
                    "responses": merge(ok("200", "Operation", schema_ref("Operation")), problem_responses(&["400", "404", "500"]))
                }
            }
    })
}

fn problem_responses(codes: &[&str]) -> Value {
    let mut map = serde_json::Map::new();
    for code in codes {
        map.insert(
            (*code).to_owned(),
            json!({
                "description": "Problem details (RFC 9457)",
                "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
            }),
        );
    }
    Value::Object(map)
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn ok(code: &str, description: &str, schema: Value) -> Value {
    json!({ code: { "description": description, "content": { "application/json": { "schema": schema } } } })
}

fn id_param() -> Value {
    json!([{
        "name": "id", "in": "path", "required": true,
        "schema": { "type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$" }
    }])
}

fn body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The whole document.
pub fn document() -> Value {
    let input_errors = ["400", "413", "415", "422"];
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Wirebot admin API",
            "version": "1",
            "description": "Served on the unix socket <runtime_dir>/admin.sock (mode 0600) and, if configured, on loopback TCP \
                            with `Authorization: Bearer <token>`. Errors are application/problem+json; 422s carry a JSON \
                            `pointer` to the offending field. The optional X-Wirebot-Actor header names the caller in the \
                            audit log."
        },
        "paths": {
            "/healthz": { "get": {
                "operationId": "healthz", "summary": "Liveness",
                "responses": ok("200", "The daemon is serving", json!({ "type": "object", "properties": { "status": { "const": "ok" } } }))
            }},
            "/v1/status": { "get": {
                "operationId": "status", "summary": "Daemon status and user counts",
                "responses": ok("200", "Status", schema_ref("Status"))
            }},
            "/v1/openapi.json": { "get": {
                "operationId": "openapi", "summary": "This document",
                "responses": ok("200", "OpenAPI 3.1 document", json!({ "type": "object" }))
            }},
            "/v1/users": {
                "get": {
                    "operationId": "listUsers", "summary": "Every user, ordered by id",
                    "responses": ok("200", "Users", json!({ "type": "array", "items": schema_ref("User") }))
                },
                "post": {
                    "operationId": "createUser",
                    "summary": "Provision a user (registry row and state directory together); returns the gateway token once",
                    "requestBody": body("CreateUser"),
                    "responses": merge(
                        ok("201", "Created", schema_ref("Created")),
                        problem_responses(&["400", "409", "413", "415", "422", "500", "503"])
                    )
                }
            },
            "/v1/users/{id}": {
                "parameters": id_param(),
                "get": {
                    "operationId": "showUser", "summary": "One user and its worker record",
                    "responses": merge(ok("200", "User", schema_ref("User")), problem_responses(&["400", "404"]))
                },
                "patch": {
                    "operationId": "updateUser", "summary": "Change tier, email or display name and re-provision (idempotent)",
                    "requestBody": body("UpdateUser"),
                    "responses": merge(
                        ok("200", "Updated", schema_ref("User")),
                        merge(problem_responses(&input_errors), problem_responses(&["404", "409", "500", "503"]))
                    )
                },
                "delete": {
                    "operationId": "deleteUser", "summary": "Archive the state directory, then delete it and the user",
                    "responses": merge(ok("200", "Removed", schema_ref("Removed")), problem_responses(&["400", "404", "409", "500", "503"]))
                }
            },
            "/v1/events": { "get": {
                "operationId": "listEvents", "summary": "The append-only audit log, oldest first",
                "parameters": [
                    { "name": "user", "in": "query", "schema": { "type": "string" } },
                    { "name": "after", "in": "query", "description": "Only events with a larger id", "schema": { "type": "integer", "minimum": 0 } },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 } }
                ],
                "responses": merge(ok("200", "Events", json!({ "type": "array", "items": schema_ref("Event") })), problem_responses(&["400"]))
            }},
            "/v1/users/{id}/token": {
                "parameters": id_param(),
                "post": {
                    "operationId": "rotateToken", "summary": "Issue a new gateway token; returned once",
                    "responses": merge(ok("200", "New token", schema_ref("Token")), problem_responses(&["400", "404", "409", "500", "503"]))
                }
            },
            "/v1/users/{id}/schedule": {
                "parameters": id_param(),
                "put": {
                    "operationId": "setSchedule",
                    "summary": "Set the member's ritual settings; the member gets matching standup/reflection cron jobs (either tier)",
                    "requestBody": body("Schedule"),
                    "responses": merge(
                        ok("200", "Stored and applied", schema_ref("ScheduleResult")),
                        merge(problem_responses(&input_errors), problem_responses(&["404", "409", "500", "503"]))
                    )
                }
            },
            "/v1/workers": { "get": {
                "operationId": "listWorkers", "summary": "Every supervised worker (empty when the daemon runs no workers)",
                "responses": ok("200", "Workers", json!({ "type": "array", "items": schema_ref("Worker") }))
            }},
            "/v1/workers/{id}/start": {
                "parameters": id_param(),
                "post": {
                    "operationId": "startWorker", "summary": "Start the member's worker and wait until it is Ready",
                    "responses": merge(ok("200", "Worker", schema_ref("Worker")), problem_responses(&["400", "404", "503"]))
                }
            },
            "/v1/workers/{id}/stop": {
                "parameters": id_param(),
                "post": {
                    "operationId": "stopWorker", "summary": "Stop the member's worker (SIGTERM, grace, SIGKILL); a proxied request wakes it",
                    "responses": merge(ok("200", "Worker", schema_ref("Worker")), problem_responses(&["400", "404", "503"]))
                }
            },
            "/v1/workers/{id}/restart": {
                "parameters": id_param(),
                "post": {
                    "operationId": "restartWorker", "summary": "Restart the member's worker; clears a quarantine",
                    "responses": merge(ok("200", "Worker", schema_ref("Worker")), problem_responses(&["400", "404", "503"]))
                }
            },
            "/v1/workers/{id}/logs": {
                "parameters": id_param(),
                "get": {
                    "operationId": "workerLogs", "summary": "The last n lines of the worker log, or what was appended since offset",
                    "parameters": [
                        { "name": "n", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 10000, "default": 100 } },
                        { "name": "offset", "in": "query", "description": "Byte offset returned by the previous call", "schema": { "type": "integer", "minimum": 0 } }
                    ],
                    "responses": merge(ok("200", "Log lines", schema_ref("LogLines")), problem_responses(&["400", "404", "500"]))
                }
            },
            "/v1/reconcile": { "post": {
                "operationId": "reconcile", "summary": "The drift between registry, disk, routes and worker processes; repaired unless dry_run",
                "parameters": [
                    { "name": "dry_run", "in": "query", "description": "Only list the drift", "schema": { "type": "boolean", "default": false } }
                ],
                "responses": merge(ok("200", "Report", schema_ref("ReconcileReport")), problem_responses(&["400", "500"]))
            }},
            "/metrics": { "get": {
                "operationId": "metrics", "summary": "Prometheus metrics of the edge proxy",
                "responses": { "200": { "description": "Prometheus text format", "content": { "text/plain": { "schema": { "type": "string" } } } } }
            }}
        },
        "components": { "schemas": {
            "Problem": {
                "type": "object", "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": { "type": "string" }, "title": { "type": "string" }, "status": { "type": "integer" },
                    "detail": { "type": "string" }, "pointer": { "type": "string", "description": "JSON pointer (RFC 6901) into the request body" }
                }
            },
            "Tier": { "type": "string", "enum": ["shared", "dedicated"] },
            "CreateUser": {
                "type": "object", "additionalProperties": false, "required": ["id", "tier"],
                "properties": {
                    "id": { "type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$" },
                    "tier": schema_ref("Tier"),
                    "email": { "type": ["string", "null"], "maxLength": 254 },
                    "runtime": { "type": ["string", "null"], "enum": ["wirebot", "clawdbot", null], "description": "The member's own worker runtime (null: its tier's)" },
                    "display_name": { "type": ["string", "null"], "minLength": 1, "maxLength": 128 }
                }
            },
            "UpdateUser": {
                "type": "object", "additionalProperties": false,
                "properties": {
                    "tier": schema_ref("Tier"),
                    "email": { "type": ["string", "null"], "description": "null clears" },
                    "display_name": { "type": ["string", "null"], "description": "null clears" },
                    "runtime": { "type": ["string", "null"], "enum": ["wirebot", "clawdbot", null], "description": "null: the tier's; a change replaces a running dedicated worker" }
                }
            },
            "Schedule": {
                "type": "object", "additionalProperties": false,
                "properties": {
                    "timezone": { "type": ["string", "null"], "description": "IANA zone, e.g. Europe/Berlin (default UTC)" },
                    "standup": { "type": ["string", "null"], "description": "Daily standup, HH:MM (null = none)" },
                    "reflection": { "type": ["string", "null"], "description": "Weekly reflection, e.g. \"fri 17:00\" (null = none)" }
                }
            },
            "ScheduleResult": {
                "type": "object", "required": ["id", "jobs"],
                "properties": {
                    "id": { "type": "string" },
                    "timezone": { "type": ["string", "null"] },
                    "standup": { "type": ["string", "null"] },
                    "reflection": { "type": ["string", "null"] },
                    "jobs": { "type": "boolean", "description": "Default cron jobs are scheduled" }
                }
            },
            "User": {
                "type": "object",
                "required": ["id", "tier", "status", "seq", "created_at", "updated_at"],
                "properties": {
                    "id": { "type": "string" }, "tier": schema_ref("Tier"),
                    "status": { "type": "string", "enum": ["provisioning", "active", "suspended"] },
                    "uid": { "type": ["integer", "null"] }, "gid": { "type": ["integer", "null"] },
                    "port": { "type": ["integer", "null"] },
                    "runtime": { "type": ["string", "null"], "enum": ["wirebot", "clawdbot", null] },
                    "email": { "type": ["string", "null"] }, "display_name": { "type": ["string", "null"] },
                    "seq": { "type": "integer" },
                    "created_at": { "type": "string", "format": "date-time" },
                    "updated_at": { "type": "string", "format": "date-time" },
                    "worker": { "type": ["object", "null"] }
                }
            },
            "Created": {
                "type": "object", "required": ["user", "token"],
                "properties": { "user": schema_ref("User"), "token": { "type": "string", "description": "Gateway token; shown only here" } }
            },
            "Token": {
                "type": "object", "required": ["id", "token"],
                "properties": { "id": { "type": "string" }, "token": { "type": "string" } }
            },
            "Removed": {
                "type": "object", "required": ["id", "archive"],
                "properties": { "id": { "type": "string" }, "archive": { "type": ["string", "null"], "description": "Path of the .tar.zst archive; null if there was no directory" } }
            },
            "Event": {
                "type": "object", "required": ["id", "ts", "actor", "action", "outcome"],
                "properties": {
                    "id": { "type": "integer" }, "ts": { "type": "string", "format": "date-time" },
                    "actor": { "type": "string" }, "action": { "type": "string" },
                    "user_id": { "type": ["string", "null"] },
                    "outcome": { "type": "string", "enum": ["ok", "error"] },
                    "detail": { "type": ["string", "null"] }
                }
            },
            "ReconcileReport": {
                "type": "object", "required": ["dry_run", "drift", "repaired", "failed"],
                "properties": {
                    "dry_run": { "type": "boolean" },
                    "drift": { "type": "array", "items": {
                        "type": "object", "required": ["kind"],
                        "properties": {
                            "kind": { "type": "string", "enum": ["orphan_dir", "missing_dir", "worker_not_running", "worker_not_supervised", "unknown_cgroup"] },
                            "user_id": { "type": "string" }, "path": { "type": "string" }, "pid": { "type": ["integer", "null"] },
                            "state": { "type": "string" }, "name": { "type": "string" }
                        }
                    }},
                    "repaired": { "type": "array", "items": { "type": "string" } },
                    "failed": { "type": "array", "items": { "type": "string" } }
                }
            },
            "Worker": {
                "type": "object", "required": ["user_id", "state", "port", "restarts"],
                "properties": {
                    "user_id": { "type": "string" },
                    "state": { "type": "string", "enum": ["starting", "ready", "running", "backoff", "quarantined", "stopping", "stopped"] },
                    "pid": { "type": ["integer", "null"] }, "port": { "type": "integer" }, "restarts": { "type": "integer" },
                    "diagnosis": { "type": ["object", "null"], "properties": {
                        "summary": { "type": "string" }, "cause": { "type": "string" }, "oom_kills": { "type": "integer" },
                        "log_tail": { "type": "array", "items": { "type": "string" } } } }
                }
            },
            "LogLines": {
                "type": "object", "required": ["lines", "offset"],
                "properties": { "lines": { "type": "array", "items": { "type": "string" } }, "offset": { "type": "integer" } }
            },
            "Status": {
                "type": "object",
                "properties": {
                    "version": { "type": "string" }, "pid": { "type": "integer" }, "uptime_s": { "type": "integer" },
                    "tenancy": { "type": "string", "enum": ["per-tenant-uids", "caller-owned"] },
                    "data_dir": { "type": "string" }, "runtime_dir": { "type": "string" }, "admin_socket": { "type": "string" },
                    "workers": { "type": "object", "description": "Supervised workers by state", "additionalProperties": { "type": "integer" } },
                    "proxy": { "type": "string", "description": "Configured edge proxy listen address" },
                    "reconcile": reconcile_status(),
                    "users": { "type": "object", "properties": {
                        "total": { "type": "integer" }, "shared": { "type": "integer" }, "dedicated": { "type": "integer" } } }
                }
            }
        }}
    });
    if let (Some(paths), Value::Object(more)) = (doc["paths"].as_object_mut(), operation_paths()) {
        paths.extend(more);
    }
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        schemas.insert("Operation".to_owned(), operation_schema());
    }
    doc
}
