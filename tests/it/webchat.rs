//! WebChat end to end: headless Debian Chromium loads `/` from a real worker, sends a message over the page's
//! own protocol v3 client, and renders the reply streamed from the fake provider (driven over CDP).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tests::fake_provider::{FakeProvider, Reply};
use tests::worker::*;
use tokio_tungstenite::tungstenite::Message;

/// A headless Chromium with a fresh profile, killed on drop.
struct Browser {
    child: Child,
    devtools_port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_chromium() -> Option<std::path::PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|n| {
        std::env::var("PATH")
            .ok()?
            .split(':')
            .map(|d| std::path::Path::new(d).join(n))
            .find(|p| p.exists())
    })
}

fn launch(bin: &std::path::Path) -> Browser {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chromium");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("DevTools listening on ws://127.0.0.1:") {
                let _ = tx.send(
                    rest.split('/')
                        .next()
                        .unwrap_or_default()
                        .parse::<u16>()
                        .ok(),
                );
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(30))
        .ok()
        .flatten()
        .expect("chromium printed no DevTools address");
    Browser {
        child,
        devtools_port: port,
        _profile: profile,
    }
}

/// A CDP session on the browser's first page.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
}

impl Page {
    async fn attach(b: &Browser) -> Page {
        let targets: Value =
            reqwest::get(format!("http://127.0.0.1:{}/json/list", b.devtools_port))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        let url = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Page { ws, next: 0 }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.ws
            .send(Message::Text(
                json!({"id": id, "method": method, "params": params})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("CDP reply")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    return v["result"].clone();
                }
            }
        }
    }

    async fn eval(&mut self, expr: &str) -> Value {
        self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        )
        .await["result"]["value"]
            .clone()
    }
}

#[tokio::test]
async fn chromium_loads_webchat_sends_a_message_and_shows_the_streamed_reply() {
    let Some(bin) = find_chromium() else {
        eprintln!("SKIP webchat: chromium is not installed (tests/install-deps.sh installs it)");
        return;
    };
    let fake = FakeProvider::start().await;
    let reply = "Hello from the fake provider, streamed token by token into the page.";
    fake.set_default(Reply::text(reply, 14, Duration::from_millis(60)));
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &basic_config(TOKEN, &fake));
    let w = Worker::start(dir.path(), WorkerOpts::default());
    // Watch the same session as an operator, to know when deltas went out.
    let mut op = WsClient::connect(&w.ws_url(), TOKEN, None).await.unwrap();

    let browser = launch(&bin);
    let mut page = Page::attach(&browser).await;
    page.call(
        "Page.navigate",
        json!({"url": w.http_url(&format!("/?token={TOKEN}&autosend=hello%20page"))}),
    )
    .await;

    // Poll the DOM: a streamed (delta) state should be visible before the final one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut states = Vec::new();
    let text = loop {
        let v = page
            .eval("(() => { const b = document.querySelector('.msg.assistant'); return b ? [b.dataset.state, b.textContent] : null })()")
            .await;
        if let Some(arr) = v.as_array() {
            let state = arr[0].as_str().unwrap_or_default().to_string();
            if states.last() != Some(&state) {
                states.push(state.clone());
            }
            if state == "final" {
                break arr[1].as_str().unwrap().to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no final reply rendered; states seen {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(text, reply);
    assert!(
        states.contains(&"delta".to_string()),
        "the page rendered streamed deltas before the final: {states:?}"
    );
    let user = page
        .eval("document.querySelector('.msg.user').textContent")
        .await;
    assert_eq!(user, "hello page");
    assert_eq!(page.eval("document.body.dataset.status").await, "connected");

    // The message went through the worker into the main session.
    let fin = op
        .next_event_where(Duration::from_secs(5), |e| {
            e["event"] == "chat" && e["payload"]["state"] == "final"
        })
        .await;
    assert!(fin.is_some());
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(
        transcript_user_texts(dir.path(), "main", "agent:main:main"),
        ["hello page"]
    );
}
