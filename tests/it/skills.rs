//! Worker skills end to end on real directories: the four Wirebot skills from templates/ reach the
//! `<available_skills>` block, a skill whose binary is missing does not, precedence, `skills.status`, `skill_read`.

use std::path::{Path, PathBuf};

use serde_json::json;
use worker::skills::{self, GateEnv, SkillDirs, SkillsConfig};

const WIREBOT_SKILLS: [&str; 4] = [
    "wirebot-core",
    "wirebot-accountability",
    "wirebot-memory",
    "wirebot-network",
];

fn templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/skills")
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    #[allow(clippy::disallowed_methods)] // test fixture
    std::fs::write(path, text).unwrap();
}

fn skill(name: &str, description: &str, metadata: &str) -> String {
    format!("---\nname: {name}\ndescription: {description}\nmetadata: {metadata}\n---\n# {name}\n")
}

#[test]
fn wirebot_skills_are_in_the_prompt_and_a_skill_missing_its_binary_is_not() {
    let root = tempfile::tempdir().unwrap();
    let (state, ws) = (root.path().join("state"), root.path().join("ws"));
    write(
        &state.join("skills/needs-ghost/SKILL.md"),
        &skill(
            "needs-ghost",
            "Needs a binary nobody has",
            r#"{"clawdbot":{"requires":{"bins":["wirebot-no-such-binary-7f3a"]}}}"#,
        ),
    );
    write(
        &state.join("skills/needs-sh/SKILL.md"),
        &skill(
            "needs-sh",
            "Needs the shell",
            r#"{"clawdbot":{"requires":{"bins":["sh"]}}}"#,
        ),
    );
    let config = SkillsConfig::default();
    let dirs = SkillDirs::new(&state, &ws, &config, Some(templates()));
    let all = skills::load_skills(&dirs).unwrap();
    let env = GateEnv::from_process(json!({}));
    let eligible = skills::eligible_skills(&all, &config, &env);
    let block = skills::available_skills_block(&eligible);

    assert!(block.contains("<available_skills>"), "{block}");
    for name in WIREBOT_SKILLS {
        assert!(
            block.contains(&format!("<name>{name}</name>")),
            "{name} missing from:\n{block}"
        );
        let location = templates().join(name).join("SKILL.md");
        assert!(
            block.contains(&format!("<location>{}</location>", location.display())),
            "{name}"
        );
    }
    assert!(block.contains("<name>needs-sh</name>"));
    assert!(!block.contains("needs-ghost"), "{block}");

    let status = skills::skills_status(&dirs, &all, &config, &env);
    let ghost = status["skills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "needs-ghost")
        .unwrap();
    assert_eq!(ghost["eligible"], false);
    assert_eq!(
        ghost["missing"]["bins"],
        json!(["wirebot-no-such-binary-7f3a"])
    );
    assert_eq!(ghost["source"], "clawdbot-managed");
    let core = status["skills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "wirebot-core")
        .unwrap();
    assert_eq!(
        (core["eligible"].as_bool(), core["source"].as_str()),
        (Some(true), Some("clawdbot-bundled"))
    );
}

#[test]
fn wirebot_skill_files_are_well_formed_and_substantial() {
    for name in WIREBOT_SKILLS {
        let path = templates().join(name).join("SKILL.md");
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = skills::parse_skill(&path, &text, skills::SkillSource::Bundled).unwrap();
        assert_eq!(parsed.name, name);
        assert!(
            parsed.description.len() >= 80 && parsed.description.len() <= 1024,
            "{name}"
        );
        assert!(text.len() > 1500, "{name} is too thin to guide the model");
    }
    let accountability =
        std::fs::read_to_string(templates().join("wirebot-accountability/SKILL.md")).unwrap();
    for tool in [
        "memory_search",
        "memory_append",
        "cron_add",
        "cron_list",
        "cron_remove",
    ] {
        assert!(
            accountability.contains(tool),
            "accountability skill never mentions {tool}"
        );
    }
    let network = std::fs::read_to_string(templates().join("wirebot-network/SKILL.md")).unwrap();
    assert!(network.contains("POST /v1/network/search") && network.contains("Network ask:"));
}

#[test]
fn workspace_overrides_bundled_and_disabled_entries_drop_out() {
    let root = tempfile::tempdir().unwrap();
    let (state, ws) = (root.path().join("state"), root.path().join("ws"));
    write(
        &ws.join("skills/wirebot-core/SKILL.md"),
        &skill("wirebot-core", "The member's own identity tweaks", "{}"),
    );
    let config =
        SkillsConfig::from_json(&json!({"entries": {"wirebot-network": {"enabled": false}}}))
            .unwrap();
    let dirs = SkillDirs::new(&state, &ws, &config, Some(templates()));
    let all = skills::load_skills(&dirs).unwrap();
    let block = skills::available_skills_block(&skills::eligible_skills(
        &all,
        &config,
        &GateEnv::from_process(json!({})),
    ));
    assert!(
        block.contains("The member&apos;s own identity tweaks"),
        "{block}"
    );
    assert!(
        block.contains(
            &ws.join("skills/wirebot-core/SKILL.md")
                .display()
                .to_string()
        )
    );
    assert!(!block.contains("wirebot-network"));
    assert!(block.contains("wirebot-memory"));
}

#[tokio::test]
async fn skill_read_tool_returns_the_skill_file() {
    let root = tempfile::tempdir().unwrap();
    let dirs = SkillDirs::new(
        &root.path().join("state"),
        &root.path().join("ws"),
        &SkillsConfig::default(),
        Some(templates()),
    );
    let all = skills::load_skills(&dirs).unwrap();
    let ctx = worker::memory::tools::ToolContext {
        memory: None,
        cron: None,
        skills: all,
        timezone: "UTC".parse().unwrap(),
        agent_id: None,
    };
    assert_eq!(
        ctx.definitions().iter().map(|d| d.name).collect::<Vec<_>>(),
        ["skill_read"]
    );
    let out = worker::memory::tools::execute(&ctx, "skill_read", json!({"name": "wirebot-memory"}))
        .await
        .unwrap();
    assert!(
        out["content"]
            .as_str()
            .unwrap()
            .contains("# Memory: what to keep, where, and how to find it")
    );
    let err = worker::memory::tools::execute(&ctx, "skill_read", json!({"name": "nope"}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no skill named"), "{err}");
    let err = worker::memory::tools::execute(&ctx, "memory_search", json!({"query": "x"}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not available"), "{err}");
}

#[test]
fn provisioning_embeds_exactly_the_template_skills_byte_for_byte() {
    let mut on_disk: Vec<String> = std::fs::read_dir(templates())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = provisioning::skills::SKILLS
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    embedded.sort();
    assert_eq!(
        embedded, on_disk,
        "templates/skills and provisioning::skills::SKILLS disagree"
    );
    for (name, text) in provisioning::skills::SKILLS {
        let file = std::fs::read_to_string(templates().join(name).join("SKILL.md")).unwrap();
        assert_eq!(*text, file, "{name}");
    }
    assert_eq!(
        WIREBOT_SKILLS.len(),
        provisioning::skills::SKILLS.len(),
        "every Wirebot skill is installed"
    );
}
