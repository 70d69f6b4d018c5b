//! Go's regexp syntax (regexp/syntax parse.go with the Perl flags `regexp.Compile` uses), parsed
//! into explicit nodes and written out for the `regex` crate: every literal and class an explicit
//! set of characters, anchors, word boundaries and greediness spelled out.

use super::{refused, unsupported};
use regex_syntax::hir::{ClassUnicode, ClassUnicodeRange};

/// Bounds well inside Go's own (nesting height 1000, 3.3M instructions), so that whatever is
/// accepted here is accepted by every Go version, and the translation stays small.
const MAX_LEN: usize = 64 << 10;
const MAX_DEPTH: usize = 100;
const MAX_SIZE: u64 = 20_000;

/// The regex crate's pattern with the meaning Go gives `source`, and the capture group names by
/// group number (0 is the whole match).
pub(super) fn translate(source: &str) -> Result<(String, Vec<Option<String>>), String> {
    if source.len() > MAX_LEN {
        return Err(unsupported("longer than 64 KiB"));
    }
    let mut p = Parser { s: source, pos: 0, flags: Flags::default(), names: vec![None], depth: 0 };
    let node = p.alternation()?;
    if p.pos < source.len() {
        return Err(refused("unexpected )"));
    }
    if size(&node) > MAX_SIZE {
        return Err(unsupported("too large once its repetitions are expanded"));
    }
    let mut pattern = String::new();
    emit(&node, &mut pattern);
    Ok((pattern, p.names))
}

/// Characters whose simple case folding differs between Unicode 13.0 (Go 1.16 to 1.20), 15.0
/// (Go 1.21 and later) and 16.0 (regex-syntax, which folds here). tests/goregex.rs checks that
/// every other character folds as Go does.
const UNSTABLE_FOLDS: &[(u32, u32)] = &[
    (0x019B, 0x019B),
    (0x0264, 0x0264),
    (0x0390, 0x0390),
    (0x03B0, 0x03B0),
    (0x1C89, 0x1C8A),
    (0x1FD3, 0x1FD3),
    (0x1FE3, 0x1FE3),
    (0x2C2F, 0x2C2F),
    (0x2C5F, 0x2C5F),
    (0xA7C0, 0xA7C1),
    (0xA7CB, 0xA7CD),
    (0xA7D0, 0xA7D1),
    (0xA7D6, 0xA7DC),
    (0xFB05, 0xFB06),
    (0x10570, 0x105BC),
    (0x10D50, 0x10D85),
];

#[derive(Clone, Copy, Default)]
struct Flags {
    fold: bool,
    multi_line: bool,
    dot_nl: bool,
    ungreedy: bool,
}

enum Node {
    Set(ClassUnicode),
    /// An assertion, as the `regex` crate spells it.
    Look(&'static str),
    Capture(Box<Node>),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    /// `counted`: written `{n,m}` (Go checks the repeat count of those only).
    Repeat {
        sub: Box<Node>,
        min: u32,
        max: Option<u32>,
        counted: bool,
        greedy: bool,
    },
}

/// The characters `lo..=hi`; Go's runes include surrogates, which no input ever decodes to.
fn span(lo: u32, hi: u32) -> ClassUnicode {
    let r = |a, b| ClassUnicodeRange::new(char::from_u32(a).unwrap(), char::from_u32(b).unwrap());
    let mut v = Vec::new();
    if lo <= hi.min(0xD7FF) {
        v.push(r(lo, hi.min(0xD7FF)));
    }
    if lo.max(0xE000) <= hi {
        v.push(r(lo.max(0xE000), hi));
    }
    ClassUnicode::new(v)
}

fn set_of(ranges: &[(u32, u32)]) -> ClassUnicode {
    let mut s = ClassUnicode::empty();
    for &(lo, hi) in ranges {
        s.union(&span(lo, hi));
    }
    s
}

/// Go's perl classes and POSIX classes (regexp/syntax perl_groups.go): ASCII only; and whether
/// the name negates it.
fn named_class(name: &str) -> Option<(&'static [(u32, u32)], bool)> {
    const DIGIT: &[(u32, u32)] = &[(0x30, 0x39)];
    const WORD: &[(u32, u32)] = &[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)];
    let class: &[(u32, u32)] = match name.replace("[:^", "[:").as_str() {
        "\\d" | "\\D" | "[:digit:]" => DIGIT,
        "\\s" | "\\S" => &[(0x9, 0xA), (0xC, 0xD), (0x20, 0x20)],
        "\\w" | "\\W" | "[:word:]" => WORD,
        "[:alnum:]" => &[(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
        "[:alpha:]" => &[(0x41, 0x5A), (0x61, 0x7A)],
        "[:ascii:]" => &[(0x0, 0x7F)],
        "[:blank:]" => &[(0x9, 0x9), (0x20, 0x20)],
        "[:cntrl:]" => &[(0x0, 0x1F), (0x7F, 0x7F)],
        "[:graph:]" => &[(0x21, 0x7E)],
        "[:lower:]" => &[(0x61, 0x7A)],
        "[:print:]" => &[(0x20, 0x7E)],
        "[:punct:]" => &[(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
        "[:space:]" => &[(0x9, 0xD), (0x20, 0x20)],
        "[:upper:]" => &[(0x41, 0x5A)],
        "[:xdigit:]" => &[(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
        _ => return None,
    };
    Some((class, name.starts_with("[:^") || matches!(name, "\\D" | "\\S" | "\\W")))
}

/// `set` closed under simple case folding, as Go's `appendFoldedRange` makes it; refused where
/// the Unicode versions Go may use disagree.
fn fold(mut set: ClassUnicode) -> Result<ClassUnicode, String> {
    // Exact where the set already holds the character's whole orbit (orbits only grow).
    for c in UNSTABLE_FOLDS.iter().flat_map(|&(lo, hi)| lo..=hi).filter_map(char::from_u32) {
        if !set.ranges().iter().any(|r| r.start() <= c && c <= r.end()) {
            continue;
        }
        let mut orbit = ClassUnicode::new([ClassUnicodeRange::new(c, c)]);
        orbit.case_fold_simple();
        orbit.difference(&set);
        if !orbit.ranges().is_empty() {
            return Err(unsupported(&format!(
                "(?i) folds U+{:04X} differently in the Unicode versions Go uses (13.0 up to Go 1.20, 15.0 from 1.21)",
                c as u32
            )));
        }
    }
    set.case_fold_simple();
    Ok(set)
}

/// Go's `repeatIsValid`: nested counted repeats may not multiply beyond 1000.
fn repeat_is_valid(node: &Node, mut n: u32) -> bool {
    let subs: &[Node] = match node {
        Node::Repeat { sub, min, max, counted, .. } => {
            if *counted {
                let m = match max {
                    Some(0) => return true,
                    Some(m) => *m,
                    None => *min,
                };
                if m > n {
                    return false;
                }
                if m > 0 {
                    n /= m;
                }
            }
            std::slice::from_ref(sub)
        }
        Node::Capture(sub) => std::slice::from_ref(sub),
        Node::Concat(v) | Node::Alt(v) => v,
        Node::Set(_) | Node::Look(_) => &[],
    };
    subs.iter().all(|s| repeat_is_valid(s, n))
}

/// Go's `calcSize` (compiled instructions), to stay far below its limit.
fn size(node: &Node) -> u64 {
    let s = match node {
        Node::Set(_) | Node::Look(_) => 1,
        Node::Capture(sub) => 2 + size(sub),
        Node::Concat(v) => v.iter().map(size).sum(),
        Node::Alt(v) => v.iter().map(size).sum::<u64>() + v.len() as u64 - 1,
        Node::Repeat { sub, min, max, .. } => {
            let sub = size(sub);
            match (min, max) {
                (0, None) => 2 + sub,
                (m, None) => 1 + *m as u64 * sub,
                (m, Some(x)) => *x as u64 * sub + (*x - *m) as u64,
            }
        }
    };
    s.max(1)
}

fn emit(node: &Node, out: &mut String) {
    match node {
        Node::Set(set) => match set.ranges() {
            [] => out.push_str(r"[^\x{0}-\x{10FFFF}]"),
            [r] if r.start() == r.end() => out.push_str(&format!(r"\x{{{:X}}}", r.start() as u32)),
            ranges => {
                out.push('[');
                for r in ranges {
                    out.push_str(&format!(r"\x{{{:X}}}-\x{{{:X}}}", r.start() as u32, r.end() as u32));
                }
                out.push(']');
            }
        },
        Node::Look(l) => out.push_str(l),
        Node::Capture(sub) => {
            out.push('(');
            emit(sub, out);
            out.push(')');
        }
        Node::Concat(v) => v.iter().for_each(|n| emit(n, out)),
        Node::Alt(v) => {
            out.push_str("(?:");
            for (i, n) in v.iter().enumerate() {
                if i > 0 {
                    out.push('|');
                }
                emit(n, out);
            }
            out.push(')');
        }
        Node::Repeat { sub, min, max, greedy, .. } => {
            out.push_str("(?:");
            emit(sub, out);
            out.push_str(&match max {
                Some(m) => format!("){{{min},{m}}}"),
                None => format!("){{{min},}}"),
            });
            if !greedy {
                out.push('?');
            }
        }
    }
}

/// What the last item of a concatenation came from. Go refuses a repetition operator right after
/// another (`a**`, `a{2}*`), but after a flag group or an empty `\Q\E` that follows one it
/// repeats the repetition.
#[derive(Clone, Copy, PartialEq)]
enum Last {
    Item,
    Repeat,
    Hidden,
}

/// Go's parser (regexp/syntax parse.go with `syntax.Perl`), building explicit nodes.
struct Parser<'a> {
    s: &'a str,
    pos: usize,
    flags: Flags,
    names: Vec<Option<String>>,
    /// Groups open, plus repetitions of repetitions so far: bounds the nesting of the nodes.
    depth: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn eat(&mut self, prefix: &str) -> bool {
        let yes = self.rest().starts_with(prefix);
        if yes {
            self.pos += prefix.len();
        }
        yes
    }

    fn next(&mut self) -> Option<char> {
        let c = self.rest().chars().next()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn alternation(&mut self) -> Result<Node, String> {
        let mut alts = vec![self.concat()?];
        while self.eat("|") {
            alts.push(self.concat()?);
        }
        Ok(if alts.len() == 1 { alts.pop().unwrap() } else { Node::Alt(alts) })
    }

    fn concat(&mut self) -> Result<Node, String> {
        let mut items = Vec::new();
        let mut last = Last::Item;
        while let Some(c) = self.rest().chars().next() {
            let bounds = match c {
                '|' | ')' => break,
                '*' => (0, None),
                '+' => (1, None),
                '?' => (0, Some(1)),
                '{' => {
                    if let Some(bounds) = self.counted()? {
                        self.repeat(&mut items, bounds, true, last)?;
                        last = Last::Repeat;
                    } else {
                        self.pos += 1;
                        items.push(self.literal('{' as u32)?);
                        last = Last::Item;
                    }
                    continue;
                }
                _ => {
                    let n = items.len();
                    self.atom(&mut items)?;
                    if items.len() > n {
                        last = Last::Item;
                    } else if last == Last::Repeat {
                        last = Last::Hidden;
                    }
                    continue;
                }
            };
            self.pos += 1;
            self.repeat(&mut items, bounds, false, last)?;
            last = Last::Repeat;
        }
        Ok(if items.len() == 1 { items.pop().unwrap() } else { Node::Concat(items) })
    }

    /// `{n}`, `{n,}`, `{n,m}` (None when the text is not one: then `{` is a literal).
    fn counted(&mut self) -> Result<Option<(u32, Option<u32>)>, String> {
        let rest = self.rest();
        let Some(end) = rest.find('}') else { return Ok(None) };
        let body = &rest[1..end];
        // Go's parseInt: digits without a leading zero.
        let int = |s: &str| -> Option<u64> {
            let ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && !(s.len() > 1 && s.starts_with('0'));
            ok.then(|| s.parse().unwrap_or(u64::MAX))
        };
        let (min, max) = match body.split_once(',') {
            None => match int(body) {
                Some(n) => (n, Some(n)),
                None => return Ok(None),
            },
            Some((a, "")) => match int(a) {
                Some(n) => (n, None),
                None => return Ok(None),
            },
            Some((a, b)) => match (int(a), int(b)) {
                (Some(n), Some(m)) => (n, Some(m)),
                _ => return Ok(None),
            },
        };
        self.pos += end + 1;
        if min > 1000 || max.is_some_and(|m| m > 1000 || min > m) {
            return Err(refused("invalid repeat count"));
        }
        Ok(Some((min as u32, max.map(|m| m as u32))))
    }

    fn repeat(&mut self, items: &mut Vec<Node>, (min, max): (u32, Option<u32>), counted: bool, last: Last) -> Result<(), String> {
        let greedy = self.flags.ungreedy == self.eat("?");
        match last {
            Last::Repeat => return Err(refused("invalid nested repetition operator")),
            // Go repeats the repetition (`a*(?i)*`): nesting without a group, bounded too.
            Last::Hidden => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(unsupported(&format!("groups and repetitions nest more than {MAX_DEPTH} deep")));
                }
            }
            Last::Item => {}
        }
        let sub = items.pop().ok_or_else(|| refused("missing argument to repetition operator"))?;
        let node = Node::Repeat { sub: Box::new(sub), min, max, counted, greedy };
        if counted && (min >= 2 || max.is_some_and(|m| m >= 2)) && !repeat_is_valid(&node, 1000) {
            return Err(refused("invalid repeat count"));
        }
        items.push(node);
        Ok(())
    }

    fn literal(&self, c: u32) -> Result<Node, String> {
        Ok(Node::Set(if self.flags.fold { fold(span(c, c))? } else { span(c, c) }))
    }

    fn class_group(&self, name: &str) -> Result<ClassUnicode, String> {
        let (ranges, negated) = named_class(name).expect("a known class name");
        let mut set = if self.flags.fold { fold(set_of(ranges))? } else { set_of(ranges) };
        if negated {
            set.negate();
        }
        Ok(set)
    }

    /// One item that is not a repetition operator; pushes nothing for a flag group or `\Q\E`.
    fn atom(&mut self, items: &mut Vec<Node>) -> Result<(), String> {
        let rest = self.rest();
        let f = self.flags;
        let node = match rest.chars().next().unwrap() {
            '(' => return self.group(items),
            '[' => self.class()?,
            c @ ('^' | '$' | '.') => {
                self.pos += 1;
                match c {
                    '^' => Node::Look(if f.multi_line { "(?m:^)" } else { r"\A" }),
                    '$' => Node::Look(if f.multi_line { "(?m:$)" } else { r"\z" }),
                    _ => Node::Set(if f.dot_nl { span(0, 0x10FFFF) } else { set_of(&[(0, 9), (11, 0x10FFFF)]) }),
                }
            }
            '\\' => {
                let look = match rest.as_bytes().get(1) {
                    Some(b'A') => Some(r"\A"),
                    Some(b'z') => Some(r"\z"),
                    Some(b'b') => Some(r"(?-u:\b)"),
                    Some(b'B') => Some(r"(?-u:\B)"),
                    Some(b'C') => return Err(refused("invalid escape sequence: \\C")),
                    Some(b'p' | b'P') => return Err(unsupported("Unicode classes (\\p, \\P) follow the Unicode tables of each Go version")),
                    _ => None,
                };
                if let Some(l) = look {
                    self.pos += 2;
                    Node::Look(l)
                } else if rest.starts_with("\\Q") {
                    let lit = &rest[2..];
                    let (lit, skip) = match lit.find("\\E") {
                        Some(i) => (&lit[..i], i + 4),
                        None => (lit, lit.len() + 2),
                    };
                    for c in lit.chars() {
                        items.push(self.literal(c as u32)?);
                    }
                    self.pos += skip;
                    return Ok(());
                } else if let Some(name) = rest.get(..2).filter(|n| named_class(n).is_some()) {
                    self.pos += 2;
                    Node::Set(self.class_group(name)?)
                } else {
                    let c = self.escape()?;
                    self.literal(c)?
                }
            }
            c => {
                self.pos += c.len_utf8();
                self.literal(c as u32)?
            }
        };
        items.push(node);
        Ok(())
    }

    /// After `(`: a capture, a named capture, a group with flags, or flags for the rest of the
    /// enclosing group (Go keeps them across `|`).
    fn group(&mut self, items: &mut Vec<Node>) -> Result<(), String> {
        let rest = self.rest();
        let mut name = None;
        let mut flags = self.flags;
        let capture = if rest.len() > 4 && rest.starts_with("(?P<") || rest.starts_with("(?<") {
            let start = if rest.starts_with("(?P<") { 4 } else { 3 };
            let end = rest.find('>').ok_or_else(|| refused("invalid named capture"))?;
            let n = &rest[start..end.max(start)];
            let valid = !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if start == 3 {
                return Err(if valid {
                    unsupported("(?<name>…) is a named group only from Go 1.22 on (older Go refuses it): write (?P<name>…)")
                } else {
                    refused("invalid or unsupported Perl syntax: (?<")
                });
            }
            if !valid {
                return Err(refused("invalid named capture"));
            }
            name = Some(n.to_string());
            self.pos += end + 1;
            true
        } else if self.eat("(?") {
            let mut negated = false;
            let mut saw_flag = false;
            loop {
                let c = self.next().ok_or_else(|| refused("invalid or unsupported Perl syntax: unfinished flags"))?;
                match c {
                    'i' => flags.fold = !negated,
                    'm' => flags.multi_line = !negated,
                    's' => flags.dot_nl = !negated,
                    'U' => flags.ungreedy = !negated,
                    '-' if !negated => {
                        negated = true;
                        saw_flag = false;
                        continue;
                    }
                    ':' | ')' if !negated || saw_flag => break,
                    _ => return Err(refused(&format!("invalid or unsupported Perl syntax: flag '{c}'"))),
                }
                saw_flag = true;
            }
            if self.s.as_bytes()[self.pos - 1] == b')' {
                self.flags = flags;
                return Ok(());
            }
            false
        } else {
            self.pos += 1;
            true
        };
        if capture {
            self.names.push(name);
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(unsupported(&format!("groups and repetitions nest more than {MAX_DEPTH} deep")));
        }
        let saved = self.flags;
        self.flags = flags;
        let inner = self.alternation()?;
        if !self.eat(")") {
            return Err(refused("missing closing )"));
        }
        self.flags = saved;
        self.depth -= 1;
        items.push(if capture { Node::Capture(Box::new(inner)) } else { inner });
        Ok(())
    }

    /// Go's `parseClass`: `]` first is a member, `-` is a member where it cannot form a range,
    /// `[` is a member unless it opens `[:name:]`; no set operations.
    fn class(&mut self) -> Result<Node, String> {
        self.pos += 1;
        let negated = self.eat("^");
        // Named classes complete as they come; single characters and ranges folded together.
        let mut set = ClassUnicode::empty();
        let mut members = ClassUnicode::empty();
        let mut first = true;
        loop {
            let rest = self.rest();
            if rest.is_empty() {
                return Err(refused("missing closing ]"));
            }
            if !first && self.eat("]") {
                break;
            }
            first = false;
            if rest.len() > 2 && rest.starts_with("[:") {
                if let Some(i) = rest[2..].find(":]") {
                    let name = &rest[..i + 4];
                    if named_class(name).is_none() {
                        return Err(refused(&format!("invalid character class range: {name}")));
                    }
                    set.union(&self.class_group(name)?);
                    self.pos += name.len();
                    continue;
                }
            }
            if rest.starts_with("\\p") || rest.starts_with("\\P") {
                return Err(unsupported("Unicode classes (\\p, \\P) follow the Unicode tables of each Go version"));
            }
            if let Some(name) = rest.get(..2).filter(|n| n.starts_with('\\') && named_class(n).is_some()) {
                set.union(&self.class_group(name)?);
                self.pos += 2;
                continue;
            }
            let lo = self.class_char()?;
            let mut hi = lo;
            if self.rest().len() >= 2 && self.rest().starts_with('-') && !self.rest()[1..].starts_with(']') {
                self.pos += 1;
                hi = self.class_char()?;
                if hi < lo {
                    return Err(refused("invalid character class range"));
                }
            }
            members.union(&span(lo, hi));
        }
        set.union(&if self.flags.fold { fold(members)? } else { members });
        if negated {
            set.negate();
        }
        Ok(Node::Set(set))
    }

    fn class_char(&mut self) -> Result<u32, String> {
        match self.rest().chars().next() {
            None => Err(refused("missing closing ]")),
            Some('\\') => self.escape(),
            Some(c) => {
                self.pos += c.len_utf8();
                Ok(c as u32)
            }
        }
    }

    /// Go's `parseEscape`: the character a `\` escape stands for.
    fn escape(&mut self) -> Result<u32, String> {
        self.pos += 1;
        let start = self.pos;
        let bad = |p: &Parser| refused(&format!("invalid escape sequence: \\{}", &p.s[start..p.pos]));
        let Some(c) = self.next() else { return Err(refused("trailing backslash at end of expression")) };
        let octal = |p: &Parser| p.rest().as_bytes().first().is_some_and(|b| (b'0'..=b'7').contains(b));
        match c {
            '1'..='7' if !octal(self) => Err(bad(self)),
            '0'..='7' => {
                let mut r = c as u32 - '0' as u32;
                for _ in 0..2 {
                    if !octal(self) {
                        break;
                    }
                    r = r * 8 + self.next().unwrap() as u32 - '0' as u32;
                }
                Ok(r)
            }
            'x' => {
                let hex = |c: Option<char>| c.and_then(|c| c.to_digit(16));
                if self.eat("{") {
                    let mut r = 0u32;
                    let mut digits = 0;
                    loop {
                        match self.next() {
                            Some('}') if digits > 0 => return Ok(r),
                            c => match hex(c) {
                                Some(v) if r * 16 + v <= 0x10FFFF => {
                                    r = r * 16 + v;
                                    digits += 1;
                                }
                                _ => return Err(bad(self)),
                            },
                        }
                    }
                }
                match (hex(self.next()), hex(self.next())) {
                    (Some(x), Some(y)) => Ok(x * 16 + y),
                    _ => Err(bad(self)),
                }
            }
            'a' => Ok(7),
            'f' => Ok(0xC),
            'n' => Ok(0xA),
            'r' => Ok(0xD),
            't' => Ok(9),
            'v' => Ok(0xB),
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok(c as u32),
            _ => Err(bad(self)),
        }
    }
}
