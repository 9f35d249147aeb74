//! Line-based markdown chunking exactly as Clawdbot does it (tokens ≈ chars / 4), plus the content hashes and chunk ids.

use sha2::{Digest, Sha256};

/// One chunk of a memory file: 1-based inclusive line range, text, and sha256 of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub start_line: usize,
    pub end_line: usize,
    pub text: String,
    pub hash: String,
}

/// Lowercase hex sha256.
pub(crate) fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    hex::encode(Sha256::digest(bytes.as_ref()))
}

/// Clawdbot's chunk id: sha256(`source:path:start:end:chunkHash:model`).
pub(crate) fn chunk_id(source: &str, path: &str, chunk: &Chunk, model: &str) -> String {
    sha256_hex(format!(
        "{source}:{path}:{}:{}:{}:{model}",
        chunk.start_line, chunk.end_line, chunk.hash
    ))
}

/// Splits `content` into chunks of at most `tokens × 4` characters (≥ 32), carrying at least `overlap × 4`
/// characters of trailing whole lines into the next chunk. Lines longer than a chunk are cut into segments
/// that keep their line number. Sizes count characters plus one per newline, as Clawdbot does.
pub fn chunk_markdown(content: &str, tokens: usize, overlap: usize) -> Vec<Chunk> {
    let max_chars = (tokens.saturating_mul(4)).max(32);
    let overlap_chars = overlap.saturating_mul(4);
    let mut chunks = Vec::new();
    // (segment, line number, char count)
    let mut current: Vec<(&str, usize, usize)> = Vec::new();
    let mut current_chars = 0usize;

    let flush = |current: &[(&str, usize, usize)], chunks: &mut Vec<Chunk>| {
        if let (Some(first), Some(last)) = (current.first(), current.last()) {
            let text = current.iter().map(|e| e.0).collect::<Vec<_>>().join("\n");
            let hash = sha256_hex(&text);
            chunks.push(Chunk {
                start_line: first.1,
                end_line: last.1,
                text,
                hash,
            });
        }
    };

    for (index, line) in content.split('\n').enumerate() {
        let line_no = index + 1;
        for segment in segments(line, max_chars) {
            let seg_chars = segment.chars().count();
            if current_chars + seg_chars + 1 > max_chars && !current.is_empty() {
                flush(&current, &mut chunks);
                // Carry trailing lines totalling at least `overlap_chars` into the next chunk.
                if overlap_chars == 0 {
                    current.clear();
                } else {
                    let mut acc = 0;
                    let mut keep_from = current.len();
                    while keep_from > 0 {
                        keep_from -= 1;
                        acc += current[keep_from].2 + 1;
                        if acc >= overlap_chars {
                            break;
                        }
                    }
                    current.drain(..keep_from);
                }
                current_chars = current.iter().map(|e| e.2 + 1).sum();
            }
            current.push((segment, line_no, seg_chars));
            current_chars += seg_chars + 1;
        }
    }
    flush(&current, &mut chunks);
    chunks
}

/// A line cut into pieces of at most `max_chars` characters (an empty line is one empty piece).
fn segments(line: &str, max_chars: usize) -> Vec<&str> {
    if line.is_empty() {
        return vec![""];
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut count = 0;
    for (byte, _) in line.char_indices() {
        if count == max_chars {
            out.push(&line[start..byte]);
            start = byte;
            count = 0;
        }
        count += 1;
    }
    out.push(&line[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_file_is_one_chunk_with_its_line_range() {
        let chunks = chunk_markdown("# Goals\n\nShip v1\n", 400, 80);
        assert_eq!(chunks.len(), 1);
        assert_eq!((chunks[0].start_line, chunks[0].end_line), (1, 4));
        assert_eq!(chunks[0].text, "# Goals\n\nShip v1\n");
        assert_eq!(chunks[0].hash, sha256_hex("# Goals\n\nShip v1\n"));
    }

    #[test]
    fn chunks_respect_size_and_overlap_whole_lines() {
        // 100 lines of 39 chars + newline = 40 each; max 1600 chars, overlap 320 = 8 lines.
        let content: String = (1..=100)
            .map(|i| format!("{i:03} {}\n", "x".repeat(35)))
            .collect();
        let chunks = chunk_markdown(&content, 400, 80);
        assert!(chunks.len() >= 3);
        for c in &chunks {
            assert!(
                c.text.chars().count() < 1600,
                "chunk too large: {}",
                c.text.len()
            );
        }
        assert_eq!((chunks[0].start_line, chunks[0].end_line), (1, 40));
        // The next chunk starts with the last 8 lines of the previous one.
        assert_eq!(chunks[1].start_line, 33);
        assert!(chunks[1].text.starts_with("033 "));
        // Every line is covered, in order.
        assert_eq!(chunks.last().unwrap().end_line, 101);
    }

    #[test]
    fn long_line_is_split_into_segments_that_keep_the_line_number() {
        let line = "é".repeat(100);
        let chunks = chunk_markdown(&line, 8, 0); // 32 chars max
        assert!(chunks.len() >= 3);
        assert!(chunks.iter().all(|c| c.start_line == 1 && c.end_line == 1));
        let joined: String = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(joined, line);
    }

    #[test]
    fn chunk_id_covers_every_field() {
        let c = Chunk {
            start_line: 1,
            end_line: 2,
            text: "t".into(),
            hash: "h".into(),
        };
        assert_eq!(
            chunk_id("memory", "MEMORY.md", &c, "m"),
            sha256_hex("memory:MEMORY.md:1:2:h:m")
        );
        assert_ne!(
            chunk_id("memory", "MEMORY.md", &c, "m"),
            chunk_id("memory", "MEMORY.md", &c, "n")
        );
    }
}
