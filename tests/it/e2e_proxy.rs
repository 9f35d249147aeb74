//! The edge proxy inside the real daemon: routes come from the registry (`/u/<id>/` + token), a member's token opens
//! only its own worker, `GET /metrics` on the admin listener counts the traffic, and the README tour (`user add demo`
//! then `/u/demo/?token=…`) serves the member's WebChat page.

use tests::supervisor::Supervisor;

use crate::e2e_lifecycle::{add_dedicated, alive, eventually, state_root, worker_of};

#[test]
fn a_member_token_opens_only_its_own_worker() {
    tests::require_root!();
    let dir = state_root();
    let sup = Supervisor::start(dir.path());
    let alice = add_dedicated(&sup, "alice");
    let bob = add_dedicated(&sup, "bob");
    let bearer = |t: &str| format!("Bearer {t}");

    // Each member through its path binding, and through its token alone.
    for (id, token) in [("alice", &alice), ("bob", &bob)] {
        let r = sup.proxy(
            "GET",
            &format!("/u/{id}/healthz"),
            &[("authorization", &bearer(token))],
        );
        assert_eq!(r.status, 200, "{id}: {}", String::from_utf8_lossy(&r.body));
        let r = sup.proxy("GET", "/healthz", &[("authorization", &bearer(token))]);
        assert_eq!(
            r.status,
            200,
            "{id} by token: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // Cross-tenant: bob's token on alice's path, and no token at all, never reach alice's worker.
    for (headers, what) in [
        (vec![("authorization", bearer(&bob))], "bob's token"),
        (
            vec![("authorization", "Bearer not-a-token".to_owned())],
            "a wrong token",
        ),
        (Vec::new(), "no token"),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = sup.proxy("GET", "/u/alice/healthz", &headers);
        assert!(
            [401, 403, 404].contains(&r.status),
            "{what} on alice's path: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = sup.proxy(
        "GET",
        "/u/nobody/healthz",
        &[("authorization", &bearer(&alice))],
    );
    assert!(
        [401, 403, 404].contains(&r.status),
        "unknown member: {}",
        r.status
    );

    // Removing a member removes its route at once.
    sup.cli(["user", "remove", "bob"]).ok();
    let r = sup.proxy("GET", "/u/bob/healthz", &[("authorization", &bearer(&bob))]);
    assert!(
        [401, 403, 404].contains(&r.status),
        "removed member: {}",
        r.status
    );

    // The proxy's metrics on the admin listener saw the traffic.
    let metrics = sup.api("GET", "/metrics", None);
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("# TYPE"), "{text}");
}

#[test]
fn readme_tour_user_add_demo_then_the_webchat_page_through_the_proxy() {
    tests::require_root!();
    let dir = state_root();
    let sup = Supervisor::start(dir.path());
    let token = add_dedicated(&sup, "demo");
    let page = sup.proxy("GET", &format!("/u/demo/?token={token}"), &[]);
    assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    let html = String::from_utf8_lossy(&page.body).to_ascii_lowercase();
    assert!(html.contains("<html"), "{html}");
    // The browser keeps the token in an HttpOnly cookie scoped to the member's prefix.
    let cookie = page.header("set-cookie").unwrap_or_default();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Path=/u/demo/"),
        "{cookie}"
    );
}

#[test]
fn an_idle_worker_is_stopped_and_the_next_request_wakes_it() {
    tests::require_root!();
    let dir = state_root();
    let sup = Supervisor::start_with(
        dir.path(),
        tests::supervisor::Options::default()
            .set("proxy.idle_stop_s", "1")
            .set("proxy.idle_check_interval_s", "1"),
    );
    let token = add_dedicated(&sup, "ida");
    let auth = format!("Bearer {token}");
    let r = sup.proxy("GET", "/u/ida/healthz", &[("authorization", &auth)]);
    assert_eq!(r.status, 200);
    let pid = worker_of(&sup, "ida").unwrap()["pid"].as_i64().unwrap();
    eventually("the idle worker is stopped", || {
        worker_of(&sup, "ida").is_some_and(|w| w["state"] == "stopped") && !alive(pid)
    });
    let r = sup.proxy("GET", "/u/ida/healthz", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let w = worker_of(&sup, "ida").unwrap();
    assert_ne!(w["pid"].as_i64(), Some(pid), "{w}");
    let metrics = String::from_utf8_lossy(&sup.api("GET", "/metrics", None).body).into_owned();
    assert!(metrics.contains("idle"), "{metrics}");
}

#[test]
fn a_host_pattern_gives_every_member_its_own_host_for_its_token_only() {
    tests::require_root!();
    let dir = state_root();
    let sup = Supervisor::start_with(
        dir.path(),
        tests::supervisor::Options::default().set("proxy.host_pattern", "\"{id}.helm.test\""),
    );
    let hana = add_dedicated(&sup, "hana");
    let out = sup.cli(["user", "add", "sora", "--tier", "shared"]);
    out.ok();
    let sora = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("gateway token (shown once): "))
        .unwrap()
        .trim()
        .to_owned();
    let get = |host: &str, token: &str| {
        sup.proxy(
            "GET",
            "/healthz",
            &[
                ("host", host),
                ("authorization", &format!("Bearer {token}")),
            ],
        )
        .status
    };
    assert_eq!(get("hana.helm.test", &hana), 200);
    assert_eq!(
        get("HANA.helm.test:443", &hana),
        200,
        "case and port ignored"
    );
    assert_eq!(get("sora.helm.test", &sora), 200, "shared members too");
    for (host, token, who) in [
        ("hana.helm.test", &sora, "sora on hana's host"),
        ("sora.helm.test", &hana, "hana on sora's host"),
    ] {
        let status = get(host, token);
        assert!([401, 403].contains(&status), "{who}: {status}");
    }
}
