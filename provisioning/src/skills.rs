//! The four Wirebot skills (`templates/skills/<name>/SKILL.md`, compiled in) and their idempotent install into a
//! state directory's managed skills dir `<state>/skills/<name>/SKILL.md` (Clawdbot's managed tier, shared by all
//! agents of that state dir). Skills a member added there themselves are never touched.

use std::path::Path;

use crate::dir::Dir;
use crate::perms::Change;
use crate::provision::{DIR_MODE, FILE_MODE};
use crate::{Error, Owner};

/// `(skill name, SKILL.md)` of every Wirebot skill, in install order.
pub const SKILLS: &[(&str, &str)] = &[
    (
        "wirebot-core",
        include_str!("../../templates/skills/wirebot-core/SKILL.md"),
    ),
    (
        "wirebot-accountability",
        include_str!("../../templates/skills/wirebot-accountability/SKILL.md"),
    ),
    (
        "wirebot-memory",
        include_str!("../../templates/skills/wirebot-memory/SKILL.md"),
    ),
    (
        "wirebot-network",
        include_str!("../../templates/skills/wirebot-network/SKILL.md"),
    ),
];

/// Install (or update) the Wirebot skills under `state_dir/skills`, owned by `owner` (`None` = the caller), dirs
/// 0700 and files 0600 like the rest of a tenant tree. `state_dir` must exist and is opened without following a
/// symlink; nothing below it is followed either. Returns whether anything on disk changed.
///
/// Idempotent: a `SKILL.md` whose bytes already match is left alone (only a wrong mode or owner is fixed, so its
/// mtime stays); a changed template replaces the file atomically; other entries of `skills/` (a member's own
/// skills) are never read, changed or removed.
pub fn install(state_dir: &Path, owner: Option<Owner>) -> Result<bool, Error> {
    let dir = Dir::open(state_dir)?;
    let (changed, created) = install_into(&dir, owner)?;
    if created {
        dir.sync()?;
    }
    Ok(changed)
}

/// [`install`] into an open state dir. Returns `(changed, skills_dir_created)`; the caller fsyncs `state`
/// when the `skills` dir was created in it (every other creation is fsynced here).
pub(crate) fn install_into(state: &Dir, owner: Option<Owner>) -> Result<(bool, bool), Error> {
    let (skills, skills_change) = state.ensure_dir("skills", DIR_MODE, owner)?;
    let mut changed = skills_change.changed();
    let mut skills_unsynced = false;
    for (name, text) in SKILLS {
        let (skill, change) = skills.ensure_dir(name, DIR_MODE, owner)?;
        changed |= change.changed();
        skills_unsynced |= change == Change::Created;
        match skill.read("SKILL.md")? {
            Some(old) if old == text.as_bytes() => {
                changed |= skill.fix_file("SKILL.md", FILE_MODE, owner)?;
            }
            _ => {
                // write_atomic fsyncs `skill` itself.
                skill.write_atomic("SKILL.md", text.as_bytes(), FILE_MODE, owner)?;
                changed = true;
            }
        }
    }
    if skills_unsynced {
        skills.sync()?;
    }
    Ok((changed, skills_change == Change::Created))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn every_template_names_itself_and_has_a_description() {
        for (name, text) in SKILLS {
            let front = text
                .strip_prefix("---\n")
                .and_then(|t| t.split_once("\n---\n"))
                .map(|(f, _)| f)
                .unwrap_or_else(|| panic!("{name}: no front matter"));
            assert!(
                front.lines().any(|l| l == format!("name: {name}")),
                "{name}: front matter must say `name: {name}`"
            );
            assert!(
                front.lines().any(|l| l.starts_with("description: ")),
                "{name}: no description"
            );
        }
    }

    #[test]
    fn install_is_idempotent_updates_changed_files_and_keeps_member_skills() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path();
        assert!(install(state, None).unwrap());
        for (name, text) in SKILLS {
            let file = state.join("skills").join(name).join("SKILL.md");
            assert_eq!(std::fs::read_to_string(&file).unwrap(), *text);
            assert_eq!(mode(&file), 0o600);
            assert_eq!(mode(file.parent().unwrap()), 0o700);
        }
        assert_eq!(mode(&state.join("skills")), 0o700);

        // A member's own skill, an outdated template and a loosened mode.
        let own = state.join("skills/my-skill");
        std::fs::create_dir(&own).unwrap();
        crate::atomic::write_file(&own.join("SKILL.md"), b"mine", 0o644).unwrap();
        let core = state.join("skills/wirebot-core/SKILL.md");
        crate::atomic::write_file(&core, b"old version", 0o600).unwrap();
        let memory = state.join("skills/wirebot-memory/SKILL.md");
        std::fs::set_permissions(&memory, std::fs::Permissions::from_mode(0o644)).unwrap();
        let untouched = state.join("skills/wirebot-network/SKILL.md");
        let before = std::fs::metadata(&untouched).unwrap();

        assert!(install(state, None).unwrap());
        assert_eq!(std::fs::read_to_string(&core).unwrap(), SKILLS[0].1);
        assert_eq!(mode(&memory), 0o600);
        assert_eq!(std::fs::read(own.join("SKILL.md")).unwrap(), b"mine");
        assert_eq!(mode(&own.join("SKILL.md")), 0o644);
        let after = std::fs::metadata(&untouched).unwrap();
        assert_eq!(
            (after.ino(), after.mtime_nsec(), after.ctime_nsec()),
            (before.ino(), before.mtime_nsec(), before.ctime_nsec())
        );

        assert!(!install(state, None).unwrap(), "third run changes nothing");
    }

    #[test]
    fn a_symlinked_skill_dir_is_refused_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir_all(state.join("skills")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.join("skills/wirebot-core")).unwrap();
        let err = install(&state, None).unwrap_err();
        assert!(matches!(err, Error::WrongFileType { .. }), "{err}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }
}
