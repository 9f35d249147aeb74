//! SKILL.md discovery, front matter, gating, prompt block (to be written).
