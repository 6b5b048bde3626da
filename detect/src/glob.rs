//! Globs over resource URIs, scopes, actions and agent ids.
//!
//! `*` matches any run of characters except `/`, `**` any run including `/`, `?` one character except
//! `/`; everything else is literal. So `postgres://crm/*` allows every table of the `crm` database and
//! `s3://reports/**` every key under the bucket, at any depth.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Star,
    DoubleStar,
    Any,
}

/// A compiled glob.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    tokens: Vec<Token>,
    /// Literal text every match starts with: a cheap first test.
    prefix: String,
    /// With two stars or more, the pattern as one step per character for a set-of-states match:
    /// backtracking over several stars is exponential in the worst case (two non-trailing `**` made an
    /// 8 KB resource match at 5 per second), the state set is linear in the text.
    steps: Option<Vec<Step>>,
    shape: Shape,
}

/// The shapes allow-lists are nearly always written in, matched without walking the tokens (every
/// event is matched against its agent's allow-lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// No wildcard: the text is the prefix.
    Exact,
    /// The prefix, then `**`: anything under it.
    Under,
    /// The prefix, then `*`: anything without a `/` after it.
    Level,
    /// Anything else: the tokens or the steps.
    General,
}

/// One step of a pattern matched a character at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Char(char),
    Any,
    Star,
    DoubleStar,
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.text)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Glob {
    /// Compiles a pattern. Every string is a valid pattern.
    ///
    /// ```
    /// use vigil_detect::Glob;
    /// let g = Glob::new("postgres://crm/*");
    /// assert!(g.matches("postgres://crm/customers"));
    /// assert!(!g.matches("postgres://crm/customers/pii"));
    /// assert!(Glob::new("s3://reports/**").matches("s3://reports/2026/q1.csv"));
    /// ```
    pub fn new(pattern: &str) -> Glob {
        let mut tokens = Vec::new();
        let mut lit = String::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            let tok = match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    Token::DoubleStar
                }
                '*' => Token::Star,
                '?' => Token::Any,
                c => {
                    lit.push(c);
                    continue;
                }
            };
            if !lit.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut lit)));
            }
            tokens.push(tok);
        }
        if !lit.is_empty() {
            tokens.push(Token::Literal(lit));
        }
        let prefix = match tokens.first() {
            Some(Token::Literal(l)) => l.clone(),
            _ => String::new(),
        };
        let stars = tokens.iter().filter(|t| matches!(t, Token::Star | Token::DoubleStar)).count();
        let steps = (stars >= 2).then(|| {
            tokens
                .iter()
                .flat_map(|t| match t {
                    Token::Literal(l) => l.chars().map(Step::Char).collect::<Vec<_>>(),
                    Token::Star => vec![Step::Star],
                    Token::DoubleStar => vec![Step::DoubleStar],
                    Token::Any => vec![Step::Any],
                })
                .collect()
        });
        let shape = match tokens.as_slice() {
            [] | [Token::Literal(_)] => Shape::Exact,
            [Token::DoubleStar] | [Token::Literal(_), Token::DoubleStar] => Shape::Under,
            [Token::Star] | [Token::Literal(_), Token::Star] => Shape::Level,
            _ => Shape::General,
        };
        Glob { text: pattern.to_owned(), tokens, prefix, steps, shape }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let Some(rest) = text.strip_prefix(self.prefix.as_str()) else { return false };
        match self.shape {
            Shape::Exact => rest.is_empty(),
            Shape::Under => true,
            Shape::Level => !rest.as_bytes().contains(&b'/'),
            Shape::General => match &self.steps {
                Some(steps) => match_steps(steps, text),
                None => match_tokens(&self.tokens, text),
            },
        }
    }
}

/// Whether `text` matches `steps`, keeping the set of steps reached after each character: time
/// proportional to the text's length times the pattern's, whatever the stars.
fn match_steps(steps: &[Step], text: &str) -> bool {
    let n = steps.len();
    // `at[i]`: the first `i` steps have matched the text so far.
    let mut at = vec![false; n + 1];
    let mut next = vec![false; n + 1];
    at[0] = true;
    close(steps, &mut at);
    for c in text.chars() {
        next.fill(false);
        for i in (0..n).filter(|&i| at[i]) {
            match steps[i] {
                Step::Char(x) if x == c => next[i + 1] = true,
                Step::Any if c != '/' => next[i + 1] = true,
                Step::Star if c != '/' => next[i] = true,
                Step::DoubleStar => next[i] = true,
                _ => {}
            }
        }
        close(steps, &mut next);
        if !next.contains(&true) {
            return false;
        }
        std::mem::swap(&mut at, &mut next);
    }
    at[n]
}

/// A star may match nothing: reaching it also reaches the step after it.
fn close(steps: &[Step], at: &mut [bool]) {
    for i in 0..steps.len() {
        if at[i] && matches!(steps[i], Step::Star | Step::DoubleStar) {
            at[i + 1] = true;
        }
    }
}

fn match_tokens(tokens: &[Token], text: &str) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return text.is_empty();
    };
    match first {
        Token::Literal(l) => text.strip_prefix(l.as_str()).is_some_and(|t| match_tokens(rest, t)),
        Token::Any => {
            let mut chars = text.chars();
            matches!(chars.next(), Some(c) if c != '/') && match_tokens(rest, chars.as_str())
        }
        Token::Star | Token::DoubleStar => {
            let cross = matches!(first, Token::DoubleStar);
            if rest.is_empty() {
                return cross || !text.contains('/');
            }
            for (i, c) in text.char_indices() {
                if match_tokens(rest, &text[i..]) {
                    return true;
                }
                if c == '/' && !cross {
                    return false;
                }
            }
            match_tokens(rest, "")
        }
    }
}

/// A set of globs; matches when any member does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobSet(Vec<Glob>);

impl GlobSet {
    /// Compiles every pattern.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> GlobSet {
        GlobSet(patterns.iter().map(|p| Glob::new(p.as_ref())).collect())
    }

    /// Whether any member matches.
    pub fn matches(&self, text: &str) -> bool {
        self.0.iter().any(|g| g.matches(text))
    }

    /// Whether the set has no patterns.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The members.
    pub fn iter(&self) -> impl Iterator<Item = &Glob> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_cases() {
        for (pattern, text, want) in [
            ("postgres://crm/*", "postgres://crm/customers", true),
            ("postgres://crm/*", "postgres://crm/", true),
            ("postgres://crm/*", "postgres://crm/a/b", false),
            ("postgres://crm/*", "postgres://hr/salaries", false),
            ("s3://b/**", "s3://b/x/y/z.csv", true),
            ("s3://b/**", "s3://b/", true),
            ("s3://b/**/*.csv", "s3://b/x/y/z.csv", true),
            ("s3://b/**/*.csv", "s3://b/x/y/z.json", false),
            ("crm:*", "crm:read", true),
            ("crm:*", "hr:read", false),
            ("*", "anything-without-slash", true),
            ("*", "a/b", false),
            ("**", "a/b", true),
            ("data.?ead", "data.read", true),
            ("data.?ead", "data./ead", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("file:///repo/**", "file:///repo/src/lib.rs", true),
            ("https://api.ex.com/v1/*/refunds", "https://api.ex.com/v1/ch_1/refunds", true),
            ("a**b**c", "a/x/b/y/c", true),
            ("a**b**c", "a/x/b/y/d", false),
            ("a*b*c", "axb/c", false),
            ("**/x/**", "a/x/b", true),
            ("?*?", "ab", true),
            ("?*?", "a", false),
            ("s3://b/**", "s3://c/x", false),
            ("s3://b/**", "s3://b", false),
            ("postgres://crm/*", "postgres://crm", false),
            ("postgres://crm/*", "postgres://crm/a/", false),
            ("exact", "exac", false),
            ("", "x", false),
            ("*", "", true),
            ("**", "", true),
        ] {
            assert_eq!(Glob::new(pattern).matches(text), want, "{pattern:?} vs {text:?}");
            // Both matchers agree, whatever the number of stars.
            let g = Glob::new(pattern);
            assert_eq!(match_tokens(&g.tokens, text), want, "backtracking: {pattern:?} vs {text:?}");
        }
        // The cases above go through each shape's own path.
        for (pattern, shape) in [
            ("exact", Shape::Exact),
            ("", Shape::Exact),
            ("s3://b/**", Shape::Under),
            ("**", Shape::Under),
            ("postgres://crm/*", Shape::Level),
            ("*", Shape::Level),
            ("s3://b/**/*.csv", Shape::General),
            ("data.?ead", Shape::General),
        ] {
            assert_eq!(Glob::new(pattern).shape, shape, "{pattern:?}");
        }
    }

    /// Issue 13, item 16: two non-trailing `**` in a policy glob made matching exponential (5 events/s on
    /// an 8 KB resource, stalling the only pipeline thread).
    #[test]
    fn two_non_trailing_double_stars_match_an_8_kb_resource_in_linear_time() {
        let g = Glob::new("s3://**a**a**a**a**b");
        let text = format!("s3://{}", "a".repeat(8 * 1024));
        let started = std::time::Instant::now();
        for _ in 0..10 {
            assert!(!g.matches(&text));
        }
        // A bound on complexity, not a speed claim: 10 matches of 8 KB against 22 steps take milliseconds;
        // the backtracking matcher did not finish one in minutes.
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
        assert!(g.matches(&format!("{text}b")));
    }
}
