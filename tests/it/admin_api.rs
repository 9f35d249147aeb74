//! The admin API over the real daemon's unix socket (and its bearer-protected TCP listener): every endpoint's happy
//! path, malformed input → problem+json 400/413/415/422 with a JSON pointer and no state change, the audit log, and
//! the OpenAPI document (every operation it lists is served).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;

use serde_json::{Value, json};
use tests::supervisor::{Options, Supervisor, http_exchange, tree};

#[test]
fn malformed_bodies_get_problem_json_with_a_pointer_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    let json_ct = [("content-type", "application/json")];
    let before = tree(sup.data_dir())
        .into_keys()
        .filter(|p| !p.starts_with("wirebot.db"))
        .collect::<Vec<_>>();
    let events_before = sup.event_count();

    // (content type, body, status, pointer)
    let big = format!(
        "{{\"id\":\"a\",\"tier\":\"shared\",\"display_name\":\"{}\"}}",
        "x".repeat(70 * 1024)
    );
    type Case<'a> = (Option<&'a str>, &'a [u8], u16, Option<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        (Some("application/json"), b"{", 400, None),
        (Some("application/json"), b"{\"id\": \"a\", }", 400, None),
        (Some("application/json"), b"", 400, None),
        (Some("application/json"), b"\xff\xfe", 400, None),
        (Some("application/json"), b"[1, 2]", 422, Some("")),
        (Some("application/json"), b"\"alice\"", 422, Some("")),
        (
            Some("application/json"),
            b"{\"tier\": \"shared\"}",
            422,
            Some("/id"),
        ),
        (
            Some("application/json"),
            b"{\"id\": \"alice\"}",
            422,
            Some("/tier"),
        ),
        (
            Some("application/json"),
            b"{\"id\": \"alice\", \"tier\": \"gold\"}",
            422,
            Some("/tier"),
        ),
        (
            Some("application/json"),
            b"{\"id\": \"Alice\", \"tier\": \"shared\"}",
            422,
            Some("/id"),
        ),
        (
            Some("application/json"),
            b"{\"id\": \"a\\u0000b\", \"tier\": \"shared\"}",
            422,
            Some("/id"),
        ),
        (
            Some("application/json"),
            b"{\"id\": \"..\", \"tier\": \"shared\"}",
            422,
            Some("/id"),
        ),
        (
            Some("application/json"),
            b"{\"id\": 7, \"tier\": \"shared\"}",
            422,
            Some("/id"),
        ),
        (
            Some("application/json"),
            b"{\"id\": \"a\", \"tier\": \"shared\", \"admin\": true}",
            422,
            Some("/admin"),
        ),
        (
            Some("application/json"),
            b"{\"id\": \"a\", \"tier\": \"shared\", \"email\": \"x\"}",
            422,
            Some("/email"),
        ),
        (
            Some("application/json"),
            b"{\"id\": \"a\", \"tier\": \"shared\", \"email\": 5}",
            422,
            Some("/email"),
        ),
        (
            Some("application/json"),
            b"{\"id\": \"a\", \"tier\": \"shared\", \"display_name\": \"a\\nb\"}",
            422,
            Some("/display_name"),
        ),
        (
            Some("text/plain"),
            b"{\"id\": \"a\", \"tier\": \"shared\"}",
            415,
            None,
        ),
        (None, b"{\"id\": \"a\", \"tier\": \"shared\"}", 415, None),
        (Some("application/json"), big.as_bytes(), 413, None),
    ];
    for (content_type, body, status, pointer) in cases {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| ("content-type", ct))
            .into_iter()
            .collect();
        let response = sup.api_raw("POST", "/v1/users", &headers, body);
        let problem = response.problem(status);
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).to_string();
        assert_eq!(problem["pointer"].as_str(), pointer, "{shown}: {problem}");
        assert!(
            !problem["detail"].as_str().unwrap().is_empty(),
            "{shown}: {problem}"
        );
    }
    // PATCH bodies are checked the same way, before the user is even looked up.
    sup.api_raw("PATCH", "/v1/users/nobody", &json_ct, b"{\"tier\": 3}")
        .problem(422);
    sup.api_raw("PATCH", "/v1/users/nobody", &json_ct, b"{oops")
        .problem(400);

    let after = tree(sup.data_dir())
        .into_keys()
        .filter(|p| !p.starts_with("wirebot.db"))
        .collect::<Vec<_>>();
    assert_eq!(after, before, "a rejected request changed the disk");
    assert!(sup.registry_users().is_empty());
    assert_eq!(
        sup.event_count(),
        events_before,
        "malformed requests are not actions"
    );
}

#[test]
fn every_endpoint_happy_path_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);

    assert_eq!(
        sup.api("GET", "/healthz", None).ok_json(),
        json!({"status": "ok"})
    );

    let created = sup.api(
        "POST",
        "/v1/users",
        Some(&json!({"id": "alice", "tier": "dedicated", "display_name": "Alice"})),
    );
    assert_eq!(created.status, 201);
    assert_eq!(created.header("location"), Some("/v1/users/alice"));
    let body = created.json();
    assert_eq!(body["user"]["id"], "alice");
    assert_eq!(body["user"]["display_name"], "Alice");
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 43);

    let conflict = sup
        .api(
            "POST",
            "/v1/users",
            Some(&json!({"id": "alice", "tier": "shared"})),
        )
        .problem(409);
    assert!(
        conflict["detail"].as_str().unwrap().contains("alice"),
        "{conflict}"
    );

    let list = sup.api("GET", "/v1/users", None).ok_json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let shown = sup.api("GET", "/v1/users/alice", None).ok_json();
    assert_eq!(shown["tier"], "dedicated");
    if tests::is_root() {
        // `user add` of a dedicated member returns once its worker is Ready.
        assert_eq!(shown["worker"]["state"], "ready", "{shown}");
        assert_eq!(shown["worker"]["user_id"], "alice", "{shown}");
        assert!(shown["worker"]["pid"].as_i64().unwrap() > 1, "{shown}");
    } else {
        assert_eq!(shown["worker"], Value::Null);
    }
    assert!(shown.get("token_hash").is_none());

    let patched = sup
        .api(
            "PATCH",
            "/v1/users/alice",
            Some(&json!({"tier": "shared", "email": "a@example.org"})),
        )
        .ok_json();
    assert_eq!(
        (patched["tier"].as_str(), patched["port"].as_u64()),
        (Some("shared"), None)
    );
    assert_eq!(patched["email"], "a@example.org");
    let cleared = sup
        .api("PATCH", "/v1/users/alice", Some(&json!({"email": null})))
        .ok_json();
    assert_eq!(cleared["email"], Value::Null);
    assert_eq!(cleared["display_name"], "Alice", "absent fields are kept");

    let rotated = sup.api("POST", "/v1/users/alice/token", None).ok_json();
    assert_eq!(rotated["id"], "alice");
    assert_ne!(rotated["token"].as_str().unwrap(), token);

    let status = sup.api("GET", "/v1/status", None).ok_json();
    assert_eq!(
        status["users"],
        json!({"total": 1, "shared": 1, "dedicated": 0})
    );
    assert_eq!(status["pid"], sup.pid());

    let removed = sup.api("DELETE", "/v1/users/alice", None).ok_json();
    assert!(removed["archive"].as_str().unwrap().ends_with(".tar.zst"));

    for (method, path) in [
        ("GET", "/v1/users/alice"),
        ("DELETE", "/v1/users/alice"),
        ("POST", "/v1/users/alice/token"),
    ] {
        let problem = sup.api(method, path, None).problem(404);
        assert_eq!(
            problem["type"], "urn:wirebot:problem:user-not-found",
            "{method} {path}"
        );
    }
    sup.api("PATCH", "/v1/users/alice", Some(&json!({})))
        .problem(404);
    let bad_path = sup.api("GET", "/v1/users/Alice", None).problem(400);
    assert!(
        bad_path["detail"].as_str().unwrap().contains("invalid"),
        "{bad_path}"
    );
    assert_eq!(
        sup.api("GET", "/v2/nothing", None).problem(404)["type"],
        "urn:wirebot:problem:no-route"
    );
    assert_eq!(
        sup.api("PUT", "/v1/users", None).problem(405)["type"],
        "urn:wirebot:problem:method-not-allowed"
    );
}

#[test]
fn every_action_is_in_the_audit_log_with_actor_and_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    sup.cli(["user", "add", "ann", "--tier", "shared"]).ok();
    sup.cli(["user", "add", "ann", "--tier", "shared"])
        .fails_with(65);
    let headers = [
        ("content-type", "application/json"),
        ("x-wirebot-actor", "ops-script"),
    ];
    let response = sup.api_raw(
        "PATCH",
        "/v1/users/ann",
        &headers,
        b"{\"tier\": \"dedicated\"}",
    );
    assert_eq!(response.status, 200);
    sup.api("POST", "/v1/users/ann/token", None).ok_json();
    sup.api("DELETE", "/v1/users/ann", None).ok_json();
    sup.api("DELETE", "/v1/users/ann", None).problem(404);

    let conn = sup.registry();
    let mut stmt = conn
        .prepare(
            "SELECT actor, action, user_id, outcome FROM events \
             WHERE action NOT LIKE 'worker.%' ORDER BY id",
        )
        .unwrap();
    let events: Vec<(String, String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let expected = [
        ("cli", "user.create", "ann", "ok"),
        ("cli", "user.create", "ann", "error"),
        ("ops-script", "user.update", "ann", "ok"),
        ("api", "user.token.rotate", "ann", "ok"),
        ("api", "user.delete", "ann", "ok"),
        ("api", "user.delete", "ann", "error"),
    ];
    let got: Vec<(&str, &str, &str, &str)> = events
        .iter()
        .map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_str(), d.as_str()))
        .collect();
    assert_eq!(got, expected);
    if tests::is_root() {
        // The dedicated member's worker transitions are audited too, by the daemon.
        let worker_events: Vec<(String, String)> = conn
            .prepare("SELECT actor, action FROM events WHERE action LIKE 'worker.%' ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            worker_events.iter().all(|(actor, _)| actor == "daemon"),
            "{worker_events:?}"
        );
        for action in ["worker.starting", "worker.ready", "worker.stopped"] {
            assert!(
                worker_events.iter().any(|(_, a)| a == action),
                "{action}: {worker_events:?}"
            );
        }
    }
    // Append-only, enforced by the database itself.
    drop(stmt);
    drop(conn);
    let rw = rusqlite::Connection::open(sup.data_dir().join("wirebot.db")).unwrap();
    let err = rw.execute("DELETE FROM events", []).unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    // Tokens never reach the log or the audit trail.
    let token = sup
        .api(
            "POST",
            "/v1/users",
            Some(&json!({"id": "tok", "tier": "shared"})),
        )
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !sup.logs().contains(&token),
        "the gateway token appears in the daemon log"
    );
    let details: Vec<String> = rw
        .prepare("SELECT COALESCE(detail, '') FROM events")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(details.iter().all(|d| !d.contains(&token)));
}

#[test]
fn the_openapi_document_lists_every_route_and_each_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    let doc = sup.api("GET", "/v1/openapi.json", None).ok_json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "parameters")
        {
            operations.push((method.to_uppercase(), path.clone()));
        }
    }
    for expected in [
        ("GET", "/healthz"),
        ("GET", "/v1/status"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/v1/users"),
        ("POST", "/v1/users"),
        ("GET", "/v1/users/{id}"),
        ("PATCH", "/v1/users/{id}"),
        ("DELETE", "/v1/users/{id}"),
        ("POST", "/v1/users/{id}/token"),
    ] {
        assert!(
            operations.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} undocumented"
        );
    }
    for (method, path) in &operations {
        let concrete = path.replace("{id}", "nobody");
        let response = sup.api_raw(
            method,
            &concrete,
            &[("content-type", "application/json")],
            b"{}",
        );
        if response.status >= 400 {
            let problem = response.problem(response.status);
            let kind = problem["type"].as_str().unwrap();
            assert!(
                kind != "urn:wirebot:problem:no-route"
                    && kind != "urn:wirebot:problem:method-not-allowed",
                "{method} {path} is documented but not served: {problem}"
            );
        }
        // Every documented status for the operation is a real HTTP status; the answer we got is among them.
        let documented: Vec<u16> = doc["paths"][path][method.to_lowercase()]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.parse().unwrap())
            .collect();
        assert!(
            documented.contains(&response.status),
            "{method} {path} answered {} (documented {documented:?})",
            response.status
        );
    }
}

#[test]
fn the_tcp_admin_listener_requires_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    let token = "s3cr3t-admin-token-0123456789";
    std::fs::File::create(&token_file)
        .unwrap()
        .write_all(format!("{token}\n").as_bytes())
        .unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let options = Options::default().set("admin.tcp", "\"127.0.0.1:0\"").set(
        "admin.token_file",
        &format!("{:?}", token_file.display().to_string()),
    );
    let sup = Supervisor::start_with(&dir, options);
    let addr = sup.addr("admin_tcp");
    assert!(addr.ip().is_loopback() && addr.port() != 0);

    let call = |auth: Option<&str>| {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        http_exchange(stream, "GET", "/v1/status", &headers, b"")
    };
    let denied = call(None);
    denied.problem(401);
    assert_eq!(denied.header("www-authenticate"), Some("Bearer"));
    call(Some("Bearer wrong-token-wrong-token-00")).problem(401);
    call(Some(&format!("Bearer {token}x"))).problem(401);
    call(Some(&format!("Basic {token}"))).problem(401);
    assert_eq!(
        call(Some(&format!("Bearer {token}"))).ok_json()["users"]["total"],
        0
    );
    assert!(
        !sup.logs().contains(token),
        "the admin token appears in the log"
    );

    // A token file others can read stops the daemon before it serves (exit 64).
    drop(sup);
    let dir2 = tempfile::tempdir().unwrap();
    let loose = dir2.path().join("admin.token");
    std::fs::File::create(&loose)
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let options = Options::default().set("admin.tcp", "\"127.0.0.1:0\"").set(
        "admin.token_file",
        &format!("{:?}", loose.display().to_string()),
    );
    let failure = Supervisor::try_start_with(&dir2, options).unwrap_err();
    assert_eq!(failure.code, Some(64), "{}", failure.stderr);
    assert!(
        failure.stderr.contains("admin.token_file") && failure.stderr.contains("chmod 600"),
        "{}",
        failure.stderr
    );
}

#[test]
fn parallel_creates_get_distinct_uids_and_ports_and_duplicates_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    // 24 distinct users and, racing them, a second create of each of the first 8 ids.
    let statuses: Vec<(String, u16)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let sup = &sup;
                scope.spawn(move || {
                    let id = format!("p{:02}", i % 24);
                    let body =
                        json!({"id": id, "tier": if i % 2 == 0 { "dedicated" } else { "shared" }});
                    (id, sup.api("POST", "/v1/users", Some(&body)).status)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = statuses.iter().filter(|(_, s)| *s == 201).count();
    let conflicts = statuses.iter().filter(|(_, s)| *s == 409).count();
    assert_eq!((created, conflicts), (24, 8), "{statuses:?}");

    let users = sup.api("GET", "/v1/users", None).ok_json();
    let users = users.as_array().unwrap();
    assert_eq!(users.len(), 24);
    assert!(users.iter().all(|u| u["status"] == "active"), "{users:?}");
    let mut ports: Vec<u64> = users.iter().filter_map(|u| u["port"].as_u64()).collect();
    let before = ports.len();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), before, "two dedicated users share a port");
    if tests::is_root() {
        let mut uids: Vec<u64> = users.iter().map(|u| u["uid"].as_u64().unwrap()).collect();
        uids.sort_unstable();
        uids.dedup();
        assert_eq!(uids.len(), 24, "two users share a uid");
    }
    for u in users {
        assert!(
            sup.user_dir(u["id"].as_str().unwrap())
                .join("clawdbot.json")
                .is_file()
        );
    }
}

#[test]
fn hostile_ids_in_the_path_are_400_and_reach_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(&dir);
    sup.cli(["user", "add", "victim", "--tier", "shared"]).ok();
    let events_before = sup.event_count();
    for raw in [
        "%2e%2e",
        "..%2fvictim",
        "a%2fb",
        "%00",
        "a%00b",
        "A",
        "%EF%BD%81",
        "-x",
        ".hidden",
        "a%20b",
        "%ff",
    ] {
        for (method, suffix) in [
            ("GET", ""),
            ("PATCH", ""),
            ("DELETE", ""),
            ("POST", "/token"),
        ] {
            let path = format!("/v1/users/{raw}{suffix}");
            let response = sup.api_raw(
                method,
                &path,
                &[("content-type", "application/json")],
                b"{}",
            );
            assert!(
                response.status == 400,
                "{method} {path}: {} {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
            response.problem(response.status);
        }
    }
    assert_eq!(
        sup.registry_users(),
        vec![("victim".into(), "shared".into())]
    );
    assert!(sup.user_dir("victim").join("clawdbot.json").is_file());
    assert_eq!(sup.event_count(), events_before);
}
