//! The tokens a chunk's Bloom filters hold (docs/storage.md, "The chunk's index"): the
//! trigrams of its messages, and its `log_data` fields, services and traces.
//!
//! A search asks for the same tokens of what it looks for: a chunk whose filter lacks one
//! cannot hold a match. So the tokens of a search must be a subset of the tokens of every
//! log it matches, by the rules PostgreSQL matches with: `ILIKE` for `q`, `@>` for
//! `data.<path>=value`.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::numeric;

/// Most trigrams of one search tested against a chunk's filter.
pub const MAX_SEARCH_GRAMS: usize = 32;

/// `c` folded for case-insensitive matching: its lowercase (the first character, where
/// Unicode gives several), with the dotted and dotless i's of every case as `i`. Two
/// characters any PostgreSQL locale lowercases alike fold alike, so a message that
/// `ILIKE` matches holds every trigram of the folded term.
pub fn fold(c: char) -> char {
    match c {
        'I' | 'i' | 'İ' | 'ı' => 'i',
        c if c.is_ascii() => c.to_ascii_lowercase(),
        c => c.to_lowercase().next().unwrap_or(c),
    }
}

/// The distinct trigrams of `text`, folded, each as its UTF-8 bytes.
pub fn grams(text: &str) -> impl Iterator<Item = Vec<u8>> + '_ {
    let folded: Vec<char> = text.chars().map(fold).collect();
    let count = folded.len().saturating_sub(2);
    (0..count).map(move |start| {
        let mut bytes = Vec::with_capacity(12);
        for c in &folded[start..start + 3] {
            let mut buffer = [0; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
        }
        bytes
    })
}

/// The trigrams a search tests for `terms` (the words and phrases of `q`): at most
/// [`MAX_SEARCH_GRAMS`], taken from every term in turn, spread over each term's length.
/// A term of fewer than three characters gives none: it can be in any chunk.
pub fn search_grams(terms: &[String]) -> Vec<Vec<u8>> {
    let per_term: Vec<Vec<Vec<u8>>> = terms
        .iter()
        .map(|term| {
            let mut grams: Vec<Vec<u8>> = grams(term).collect();
            grams.dedup();
            grams
        })
        .collect();
    let mut chosen: Vec<Vec<u8>> = Vec::new();
    let longest = per_term.iter().map(Vec::len).max().unwrap_or(0);
    // Round robin over the terms, each term's trigrams taken from both ends inwards, so
    // that a cut keeps the ones farthest apart.
    for round in 0..longest {
        for grams in &per_term {
            let index = if round % 2 == 0 {
                round / 2
            } else {
                grams.len().saturating_sub(1 + round / 2)
            };
            if round < grams.len()
                && let Some(gram) = grams.get(index)
                && !chosen.contains(gram)
            {
                chosen.push(gram.clone());
                if chosen.len() == MAX_SEARCH_GRAMS {
                    return chosen;
                }
            }
        }
    }
    chosen
}

/// The token of a scalar `value` (JSON text) at `path` of `log_data`, or None for an
/// object or array: `v\0<path>\0<value>`, the value as `s<string>`, `n<canonical
/// number>`, `true`, `false` or `null`.
pub fn value_token(path: &[impl AsRef<str>], value: &RawValue) -> Option<Vec<u8>> {
    let text = value.get();
    let tagged = match text.as_bytes().first()? {
        b'"' => format!("s{}", serde_json::from_str::<String>(text).ok()?),
        b'{' | b'[' => return None,
        b't' | b'f' | b'n' => text.to_owned(),
        _ => format!("n{}", numeric::canonical(text)),
    };
    let mut token = b"v\0".to_vec();
    push_path(&mut token, path);
    token.push(0);
    token.extend_from_slice(tagged.as_bytes());
    Some(token)
}

/// The token saying that `path` of `log_data` holds a number: `n\0<path>`.
pub fn number_token(path: &[impl AsRef<str>]) -> Vec<u8> {
    let mut token = b"n\0".to_vec();
    push_path(&mut token, path);
    token
}

/// The token of a log's service: `s\0<service_name>`.
pub fn service_token(service: &str) -> Vec<u8> {
    [b"s\0", service.as_bytes()].concat()
}

/// The token of a log's trace: `t\0<trace_id>`.
pub fn trace_token(trace: &str) -> Vec<u8> {
    [b"t\0", trace.as_bytes()].concat()
}

fn push_path(token: &mut Vec<u8>, path: &[impl AsRef<str>]) {
    for (index, name) in path.iter().enumerate() {
        if index > 0 {
            token.push(0);
        }
        token.extend_from_slice(name.as_ref().as_bytes());
    }
}

/// Every token of `log_data` (JSON text of an object): each scalar reached through
/// objects, and each number's path. Text that is not an object gives none.
pub fn field_tokens(log_data: &str, tokens: &mut Vec<Vec<u8>>) {
    let Ok(object) = serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(log_data) else {
        return;
    };
    let mut path = Vec::new();
    walk(&object, &mut path, tokens, 0);
}

/// Objects nest at most this deep in `log_data` (the ingest rules' limit).
const MAX_DEPTH: usize = 64;

fn walk(
    object: &BTreeMap<String, Box<RawValue>>,
    path: &mut Vec<String>,
    tokens: &mut Vec<Vec<u8>>,
    depth: usize,
) {
    for (name, value) in object {
        path.push(name.clone());
        match value.get().as_bytes().first() {
            Some(b'{') if depth < MAX_DEPTH => {
                if let Ok(inner) =
                    serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(value.get())
                {
                    walk(&inner, path, tokens, depth + 1);
                }
            }
            Some(b'{' | b'[') | None => {}
            Some(first) => {
                if !matches!(first, b'"' | b't' | b'f' | b'n') {
                    tokens.push(number_token(path));
                }
                tokens.extend(value_token(path, value));
            }
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).replace('\0', "|")
    }

    #[test]
    fn folding_lowercases_and_merges_the_i_family() {
        assert_eq!("VaLvE".chars().map(fold).collect::<String>(), "valve");
        assert_eq!("ÉÜΣ".chars().map(fold).collect::<String>(), "éüσ");
        for c in ['I', 'i', 'İ', 'ı'] {
            assert_eq!(fold(c), 'i');
        }
    }

    #[test]
    fn a_substring_match_holds_every_trigram_of_the_term() {
        let message: Vec<Vec<u8>> = grams("Pressure LOW at Overvalve3").collect();
        for term in ["valve", "ressure low", "VALVE3", "at o"] {
            for gram in grams(term) {
                assert!(message.contains(&gram), "{term}: {}", text(&gram));
            }
        }
        assert_eq!(grams("ab").count(), 0);
        assert_eq!(
            grams("héllo").map(|g| text(&g)).collect::<Vec<_>>(),
            ["hél", "éll", "llo"]
        );
    }

    #[test]
    fn a_search_tests_at_most_32_trigrams_from_every_term() {
        let terms = vec!["a".repeat(10), "x".repeat(3), "pressure".into()];
        let chosen = search_grams(&terms);
        assert!(chosen.contains(&b"xxx".to_vec()));
        assert!(chosen.contains(&b"pre".to_vec()) && chosen.contains(&b"ure".to_vec()));
        let long = vec!["abcdefghijklmnopqrstuvwxyz0123456789".repeat(3)];
        assert_eq!(search_grams(&long).len(), MAX_SEARCH_GRAMS);
        assert!(search_grams(&["ok".into()]).is_empty());
    }

    #[test]
    fn fields_give_a_token_per_scalar_and_a_path_per_number() {
        let mut tokens = Vec::new();
        field_tokens(
            r#"{"a": {"b": 1.50, "c": "x"}, "d": [1, 2], "e": true, "f": null}"#,
            &mut tokens,
        );
        let mut texts: Vec<String> = tokens.iter().map(|t| text(t)).collect();
        texts.sort();
        assert_eq!(
            texts,
            ["n|a|b", "v|a|b|n15e1", "v|a|c|sx", "v|e|true", "v|f|null"]
        );
        let path = ["a", "b"];
        let query = RawValue::from_string("1.5".into()).unwrap();
        assert!(tokens.contains(&value_token(&path, &query).unwrap()));
        let escaped = RawValue::from_string(r#""\u0078""#.into()).unwrap();
        assert!(tokens.contains(&value_token(&["a", "c"], &escaped).unwrap()));
    }
}
