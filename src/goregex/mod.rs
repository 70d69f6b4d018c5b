//! Description regexes (`perms[].regex`, `rewrite.regex` and `rewrite.repl`) with the meaning Go
//! gives them, since nix2container applies them with Go's `regexp` (`re.Match` on a file's source
//! path for perms, `re.ReplaceAll` on it for a rewrite). `syntax` parses a regex by Go's rules
//! and writes it out for the `regex` crate; here names are read as Go reads them (a byte that
//! does not begin valid UTF-8 is one U+FFFD) and replaced as Go's `ReplaceAll` and `Expand` do.
//! What Go refuses is refused; what Go accepts but cannot be given exactly its meaning here is
//! refused too ("cannot reproduce exactly"), never matched with another meaning.

mod syntax;

use std::borrow::Cow;

/// A regex with Go's meaning.
#[derive(Clone, Debug)]
pub struct GoRegex {
    source: String,
    re: regex::Regex,
    /// Capture group names by group number (0 is the whole match).
    names: Vec<Option<String>>,
}

/// A rewrite: every match of `regex` in a name replaced by `repl` expanded as Go's `Expand` does.
#[derive(Clone, Debug)]
pub struct Rewrite {
    pub regex: GoRegex,
    repl: String,
    template: Vec<Piece>,
}

#[derive(Clone, Debug)]
enum Piece {
    Text(String),
    /// `$n`, `${n}`, `$name`: the first of these groups that took part in the match (Go looks a
    /// name up among all groups in order; an unknown name or group gives nothing).
    Groups(Vec<usize>),
}

fn refused(why: &str) -> String {
    format!("is refused by Go's regexp, so nix2container cannot use it: {why}")
}

fn unsupported(why: &str) -> String {
    format!("has a meaning in Go that nixoci cannot reproduce exactly: {why}")
}

/// A name as Go's regexp reads it: valid UTF-8 as it is; otherwise each byte that does not
/// begin a valid sequence is a U+FFFD of its own (`utf8.DecodeRune`), and `at` maps each offset
/// in the text back to the name.
struct GoText<'a> {
    text: Cow<'a, str>,
    at: Vec<usize>,
}

impl GoText<'_> {
    fn new(name: &[u8]) -> GoText<'_> {
        if let Ok(s) = std::str::from_utf8(name) {
            return GoText { text: Cow::Borrowed(s), at: Vec::new() };
        }
        let (mut text, mut at, mut off) = (String::new(), Vec::new(), 0);
        for chunk in name.utf8_chunks() {
            text.push_str(chunk.valid());
            at.extend(off..off + chunk.valid().len());
            off += chunk.valid().len();
            for _ in chunk.invalid() {
                text.push('\u{FFFD}');
                at.extend([off; 3]);
                off += 1;
            }
        }
        at.push(off);
        GoText { text: Cow::Owned(text), at }
    }

    fn offset(&self, i: usize) -> usize {
        if self.at.is_empty() { i } else { self.at[i] }
    }
}

impl GoRegex {
    pub fn new(source: &str) -> Result<GoRegex, String> {
        let (pattern, names) = syntax::translate(source)?;
        let re = regex::Regex::new(&pattern).map_err(|e| unsupported(&format!("too large for the regex engine ({e})")))?;
        Ok(GoRegex { source: source.to_string(), re, names })
    }

    /// The regex as the description gives it.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Go's `re.Match(name)`.
    pub fn is_match(&self, name: &[u8]) -> bool {
        self.re.is_match(&GoText::new(name).text)
    }
}

impl Rewrite {
    /// `repl` is read as Go's `Expand` reads a template: `$$` is `$`; `$name` and `${name}` take
    /// the longest run of letters, digits and `_`; a name that is a number (no leading zero) is
    /// a group number; anything else after `$` leaves the `$` as it is.
    pub fn new(regex: &str, repl: &str) -> Result<Rewrite, String> {
        let regex = GoRegex::new(regex).map_err(|e| format!("regex '{regex}' {e}"))?;
        let mut template = Vec::new();
        let mut text = String::new();
        let mut t = repl;
        while let Some(i) = t.find('$') {
            text.push_str(&t[..i]);
            t = &t[i + 1..];
            if let Some(rest) = t.strip_prefix('$') {
                text.push('$');
                t = rest;
                continue;
            }
            let braced = t.strip_prefix('{');
            let body = braced.unwrap_or(t);
            let len = body.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(body.len());
            if body[len..].chars().next().is_some_and(|c| !c.is_ascii()) {
                // Go reads on with unicode.IsLetter and IsDigit, whose tables change with Go.
                return Err(format!("replacement '{repl}' {}", unsupported("a non-ASCII character right after a $ reference")));
            }
            let name = &body[..len];
            let rest = if braced.is_some() { body[len..].strip_prefix('}') } else { Some(&body[len..]) };
            let Some(rest) = rest.filter(|_| !name.is_empty()) else {
                text.push('$'); // not a reference: the '$' is literal text
                continue;
            };
            let number = (name.len() <= 9 && name.bytes().all(|b| b.is_ascii_digit()) && !(name.len() > 1 && name.starts_with('0')))
                .then(|| name.parse::<usize>().unwrap());
            let groups = match number {
                Some(n) => (n < regex.names.len()).then_some(n).into_iter().collect(),
                None => (0..regex.names.len()).filter(|&i| regex.names[i].as_deref() == Some(name)).collect(),
            };
            template.push(Piece::Text(std::mem::take(&mut text)));
            template.push(Piece::Groups(groups));
            t = rest;
        }
        text.push_str(t);
        template.push(Piece::Text(text));
        Ok(Rewrite { regex, repl: repl.to_string(), template })
    }

    pub fn repl(&self) -> &str {
        &self.repl
    }

    /// Go's `re.ReplaceAll(name, repl)`: matches are searched from after the previous one,
    /// stepping one character past an empty match, and an empty match right after a match is
    /// not replaced; bytes outside the matches are kept as they are.
    pub fn apply<'a>(&self, name: &'a [u8]) -> Cow<'a, [u8]> {
        let re = &self.regex.re;
        let g = GoText::new(name);
        let text: &str = &g.text;
        let mut locs = re.capture_locations();
        let mut out = Vec::new();
        let (mut last, mut pos, mut matched) = (0, 0, false);
        while pos <= text.len() {
            let Some(m) = re.captures_read_at(&mut locs, text, pos) else { break };
            matched = true;
            out.extend_from_slice(&name[g.offset(last)..g.offset(m.start())]);
            if m.end() > last || m.start() == 0 {
                for piece in &self.template {
                    match piece {
                        Piece::Text(s) => out.extend_from_slice(s.as_bytes()),
                        Piece::Groups(gs) => {
                            if let Some((s, e)) = gs.iter().find_map(|&i| locs.get(i)) {
                                out.extend_from_slice(&name[g.offset(s)..g.offset(e)]);
                            }
                        }
                    }
                }
            }
            last = m.end();
            let width = text[pos..].chars().next().map_or(1, char::len_utf8);
            pos = if pos + width > m.end() { pos + width } else { m.end() };
        }
        if !matched {
            return Cow::Borrowed(name);
        }
        out.extend_from_slice(&name[g.offset(last)..]);
        Cow::Owned(out)
    }
}
