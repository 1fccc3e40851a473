//! Consul's filter expression language (go-bexpr) for service-resolver subsets, over the
//! fields of one instance that Consul's own filters see.
//!
//! Supported: `==`, `!=`, `in`, `not in`, `contains`, `not contains`, `is empty`,
//! `is not empty`, `and`, `or`, `not`, parentheses, and values quoted (`"..."`, `` `...` ``)
//! or bare. Selectors: `Service.ID`, `Service.Service`, `Service.Tags`, `Service.Meta`,
//! `Service.Meta.<key>`, `Node.Node`, `Node.Meta`, `Node.Meta.<key>`. Anything else —
//! `matches` (no regular-expression engine is linked in), `Checks`, addresses, ports — is
//! refused when the file is read, so a subset never silently selects every instance.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};

/// The fields of one instance a filter can select on.
pub struct Fields<'a> {
    pub service: &'a str,
    pub id: &'a str,
    pub tags: &'a [String],
    pub meta: &'a BTreeMap<String, String>,
    pub node: &'a str,
    pub node_meta: &'a BTreeMap<String, String>,
}

/// A parsed expression, kept with its text (shown by `check --json`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    text: String,
    expr: Expr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Match(Selector, Op, String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Selector {
    ServiceId,
    ServiceName,
    ServiceTags,
    ServiceMeta,
    ServiceMetaKey(String),
    NodeName,
    NodeMeta,
    NodeMetaKey(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Equal,
    NotEqual,
    In,
    NotIn,
    IsEmpty,
    IsNotEmpty,
}

/// What a selector names on one instance.
enum Value<'a> {
    Text(&'a str),
    List(&'a [String]),
    Map(&'a BTreeMap<String, String>),
}

/// Why an expression was refused, with the offending part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError(pub String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const SELECTORS: &str = "Service.ID, Service.Service, Service.Tags, Service.Meta, Service.Meta.<key>, Node.Node, Node.Meta, Node.Meta.<key>";

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let tokens = tokenize(text)?;
        let mut p = Parser { tokens, at: 0 };
        if p.tokens.is_empty() {
            return Err(FilterError("is empty".into()));
        }
        let expr = p.or()?;
        if let Some(t) = p.peek() {
            return Err(FilterError(format!(
                "unexpected {t} after a complete expression"
            )));
        }
        Ok(Filter {
            text: text.to_owned(),
            expr,
        })
    }

    /// A filter no instance passes, kept with `text`: for an expression from the agent that
    /// this evaluator refuses (a file's is refused outright), so its subset fails closed.
    pub fn nothing(text: &str) -> Filter {
        let id = |op| Box::new(Expr::Match(Selector::ServiceId, op, String::new()));
        Filter {
            text: text.to_owned(),
            expr: Expr::And(id(Op::IsEmpty), id(Op::IsNotEmpty)),
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, instance: &Fields<'_>) -> bool {
        self.expr.eval(instance)
    }
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl Expr {
    fn eval(&self, f: &Fields<'_>) -> bool {
        match self {
            Expr::And(a, b) => a.eval(f) && b.eval(f),
            Expr::Or(a, b) => a.eval(f) || b.eval(f),
            Expr::Not(a) => !a.eval(f),
            Expr::Match(sel, op, want) => {
                let value = sel.of(f);
                match op {
                    Op::Equal => value.text() == Some(want.as_str()),
                    Op::NotEqual => value.text() != Some(want.as_str()),
                    Op::In => value.holds(want),
                    Op::NotIn => !value.holds(want),
                    Op::IsEmpty => value.is_empty(),
                    Op::IsNotEmpty => !value.is_empty(),
                }
            }
        }
    }
}

impl Selector {
    fn parse(word: &str) -> Result<Selector, FilterError> {
        let mut parts = word.splitn(3, '.');
        let sel = match (parts.next(), parts.next(), parts.next()) {
            (Some("Service"), Some("ID"), None) => Selector::ServiceId,
            (Some("Service"), Some("Service"), None) => Selector::ServiceName,
            (Some("Service"), Some("Tags"), None) => Selector::ServiceTags,
            (Some("Service"), Some("Meta"), None) => Selector::ServiceMeta,
            (Some("Service"), Some("Meta"), Some(k)) if !k.is_empty() => {
                Selector::ServiceMetaKey(k.to_owned())
            }
            (Some("Node"), Some("Node"), None) => Selector::NodeName,
            (Some("Node"), Some("Meta"), None) => Selector::NodeMeta,
            (Some("Node"), Some("Meta"), Some(k)) if !k.is_empty() => {
                Selector::NodeMetaKey(k.to_owned())
            }
            _ => {
                return Err(FilterError(format!(
                    "selector {word:?} is not supported (supported: {SELECTORS})"
                )))
            }
        };
        Ok(sel)
    }

    fn is_scalar(&self) -> bool {
        !matches!(
            self,
            Selector::ServiceTags | Selector::ServiceMeta | Selector::NodeMeta
        )
    }

    fn of<'a>(&self, f: &Fields<'a>) -> Value<'a> {
        // A missing meta key reads as the empty string, as a Go map's zero value does.
        let key = |m: &'a BTreeMap<String, String>, k: &str| {
            Value::Text(m.get(k).map_or("", String::as_str))
        };
        match self {
            Selector::ServiceId => Value::Text(f.id),
            Selector::ServiceName => Value::Text(f.service),
            Selector::ServiceTags => Value::List(f.tags),
            Selector::ServiceMeta => Value::Map(f.meta),
            Selector::ServiceMetaKey(k) => key(f.meta, k),
            Selector::NodeName => Value::Text(f.node),
            Selector::NodeMeta => Value::Map(f.node_meta),
            Selector::NodeMetaKey(k) => key(f.node_meta, k),
        }
    }
}

impl Value<'_> {
    fn text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// `in` / `contains`: an element of a list, a key of a map, a substring of a text.
    fn holds(&self, want: &str) -> bool {
        match self {
            Value::Text(t) => t.contains(want),
            Value::List(l) => l.iter().any(|e| e == want),
            Value::Map(m) => m.contains_key(want),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Value::Text(t) => t.is_empty(),
            Value::List(l) => l.is_empty(),
            Value::Map(m) => m.is_empty(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    Equal,
    NotEqual,
    /// A bare word: a keyword, a selector or an unquoted value.
    Word(String),
    Quoted(String),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Open => f.write_str("`(`"),
            Token::Close => f.write_str("`)`"),
            Token::Equal => f.write_str("`==`"),
            Token::NotEqual => f.write_str("`!=`"),
            Token::Word(w) => write!(f, "`{w}`"),
            Token::Quoted(q) => write!(f, "{q:?}"),
        }
    }
}

fn is_word_byte(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':')
}

fn tokenize(text: &str) -> Result<Vec<Token>, FilterError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' => {
                chars.next();
                out.push(if c == '(' { Token::Open } else { Token::Close });
            }
            '=' | '!' => {
                chars.next();
                match chars.next() {
                    Some((_, '=')) => out.push(if c == '=' {
                        Token::Equal
                    } else {
                        Token::NotEqual
                    }),
                    _ => {
                        return Err(FilterError(format!(
                            "at {at}: expected `==` or `!=`"
                        )))
                    }
                }
            }
            '"' | '`' => {
                chars.next();
                let mut s = String::new();
                let mut closed = false;
                while let Some((_, ch)) = chars.next() {
                    if ch == c {
                        closed = true;
                        break;
                    }
                    if ch == '\\' && c == '"' {
                        match chars.next() {
                            Some((_, e @ ('"' | '\\'))) => s.push(e),
                            Some((_, 'n')) => s.push('\n'),
                            Some((_, 't')) => s.push('\t'),
                            _ => {
                                return Err(FilterError(format!(
                                    "at {at}: unsupported escape in a quoted value"
                                )))
                            }
                        }
                    } else {
                        s.push(ch);
                    }
                }
                if !closed {
                    return Err(FilterError(format!("at {at}: unterminated quoted value")));
                }
                out.push(Token::Quoted(s));
            }
            c if is_word_byte(c) => {
                let mut w = String::new();
                while let Some(&(_, ch)) = chars.peek() {
                    if !is_word_byte(ch) {
                        break;
                    }
                    w.push(ch);
                    chars.next();
                }
                out.push(Token::Word(w));
            }
            other => {
                return Err(FilterError(format!(
                    "at {at}: unexpected character {other:?} (Service.Meta[\"key\"] indexing is not supported: write Service.Meta.key)"
                )))
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn peek_word(&self, offset: usize) -> Option<&str> {
        match self.tokens.get(self.at + offset) {
            Some(Token::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += usize::from(t.is_some());
        t
    }

    fn keyword(&mut self, kw: &str) -> bool {
        let found = self.peek_word(0) == Some(kw);
        self.at += usize::from(found);
        found
    }

    fn or(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        // `not` before `in` belongs to `Value not in Selector`, which starts with a value.
        if self.peek_word(0) == Some("not") {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let inner = self.or()?;
            return match self.next() {
                Some(Token::Close) => Ok(inner),
                Some(t) => Err(FilterError(format!("expected `)`, found {t}"))),
                None => Err(FilterError("expected `)` before the end".into())),
            };
        }
        self.comparison()
    }

    fn value(&mut self, after: &str) -> Result<String, FilterError> {
        match self.next() {
            Some(Token::Word(w)) | Some(Token::Quoted(w)) => Ok(w),
            Some(t) => Err(FilterError(format!(
                "expected a value after {after}, found {t}"
            ))),
            None => Err(FilterError(format!("expected a value after {after}"))),
        }
    }

    fn selector(&mut self, after: &str) -> Result<Selector, FilterError> {
        match self.next() {
            Some(Token::Word(w)) => Selector::parse(&w),
            Some(t) => Err(FilterError(format!(
                "expected a selector after {after}, found {t}"
            ))),
            None => Err(FilterError(format!("expected a selector after {after}"))),
        }
    }

    fn comparison(&mut self) -> Result<Expr, FilterError> {
        // `Value in Selector` / `Value not in Selector`.
        let value_first = matches!(
            (self.peek_word(1), self.peek_word(2)),
            (Some("in"), _) | (Some("not"), Some("in"))
        ) && matches!(self.peek(), Some(Token::Word(_) | Token::Quoted(_)));
        if value_first {
            let value = self.value("the start")?;
            let op = if self.keyword("not") {
                Op::NotIn
            } else {
                Op::In
            };
            self.keyword("in");
            let sel = self.selector("`in`")?;
            return Ok(Expr::Match(sel, op, value));
        }
        let sel = self.selector("the start of a comparison")?;
        let op = match self.next() {
            Some(Token::Equal) => Op::Equal,
            Some(Token::NotEqual) => Op::NotEqual,
            Some(Token::Word(w)) if w == "contains" => Op::In,
            Some(Token::Word(w)) if w == "not" => {
                if self.keyword("contains") {
                    Op::NotIn
                } else if self.keyword("matches") {
                    return Err(unsupported_matches());
                } else {
                    return Err(FilterError(
                        "expected `contains` after `not` following a selector".into(),
                    ));
                }
            }
            Some(Token::Word(w)) if w == "is" => {
                let not = self.keyword("not");
                if !self.keyword("empty") {
                    return Err(FilterError("expected `empty` after `is`".into()));
                }
                let op = if not { Op::IsNotEmpty } else { Op::IsEmpty };
                return Ok(Expr::Match(sel, op, String::new()));
            }
            Some(Token::Word(w)) if w == "matches" => return Err(unsupported_matches()),
            Some(t) => {
                return Err(FilterError(format!(
                    "expected an operator (==, !=, contains, not contains, is empty, is not empty), found {t}"
                )))
            }
            None => return Err(FilterError("expected an operator after the selector".into())),
        };
        if matches!(op, Op::Equal | Op::NotEqual) && !sel.is_scalar() {
            return Err(FilterError(
                "== and != compare a single value: use `contains` or `in` on Service.Tags, Service.Meta and Node.Meta".into(),
            ));
        }
        let value = self.value("the operator")?;
        Ok(Expr::Match(sel, op, value))
    }
}

fn unsupported_matches() -> FilterError {
    FilterError("`matches` (regular expressions) is not supported: use ==, in or contains".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> (
        Vec<String>,
        BTreeMap<String, String>,
        BTreeMap<String, String>,
    ) {
        (
            vec!["canary".into(), "arm64".into()],
            [
                ("version".to_owned(), "v2".to_owned()),
                ("zone".to_owned(), "eu-1".to_owned()),
            ]
            .into(),
            [("rack".to_owned(), "r1".to_owned())].into(),
        )
    }

    #[test]
    fn evaluates_like_consul() {
        let (tags, meta, node_meta) = instance();
        let f = Fields {
            service: "db",
            id: "db-2",
            tags: &tags,
            meta: &meta,
            node: "edge-7",
            node_meta: &node_meta,
        };
        let cases = [
            ("Service.Meta.version == v2", true),
            ("Service.Meta.version == \"v2\"", true),
            ("Service.Meta.version == `v2`", true),
            ("Service.Meta.version == v1", false),
            ("Service.Meta.version != v1", true),
            ("Service.Meta.missing == \"\"", true),
            ("Service.Meta.missing is empty", true),
            ("Service.Meta.version is not empty", true),
            ("Service.Meta is not empty", true),
            ("canary in Service.Tags", true),
            ("\"canary\" in Service.Tags", true),
            ("beta in Service.Tags", false),
            ("beta not in Service.Tags", true),
            ("Service.Tags contains arm64", true),
            ("Service.Tags not contains arm64", false),
            ("Service.Tags is empty", false),
            ("version in Service.Meta", true),
            ("Service.Meta contains zone", true),
            ("Service.Meta not contains rack", true),
            ("Service.ID == db-2", true),
            ("Service.Service == db", true),
            ("Node.Node == edge-7", true),
            ("Node.Meta.rack == r1", true),
            ("rack in Node.Meta", true),
            ("Service.ID contains db-", true),
            ("Service.Meta.zone == eu-1 and canary in Service.Tags", true),
            ("Service.Meta.zone == eu-2 or canary in Service.Tags", true),
            ("Service.Meta.zone == eu-2 or beta in Service.Tags", false),
            ("not Service.Meta.version == v2", false),
            (
                "not (Service.Meta.version == v1 or beta in Service.Tags)",
                true,
            ),
            // `and` binds tighter than `or`.
            (
                "Service.ID == x or Service.ID == db-2 and Node.Node == edge-7",
                true,
            ),
            (
                "(Service.ID == x or Service.ID == db-2) and Node.Node == other",
                false,
            ),
            (
                "Service.ID == x or Service.ID == db-2 and Node.Node == other",
                false,
            ),
            ("not not Node.Node == edge-7", true),
        ];
        for (text, want) in cases {
            let filter = Filter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(filter.matches(&f), want, "{text}");
        }
    }

    #[test]
    fn refuses_what_it_does_not_support() {
        let cases = [
            ("", "is empty"),
            ("Service.Meta.version", "expected an operator"),
            ("Service.Meta.version ==", "expected a value"),
            ("Checks.Status == passing", "not supported"),
            ("Service.Address == 10.0.0.1", "not supported"),
            ("Service.Port == 8080", "not supported"),
            ("Service.Meta.version matches \"v.*\"", "matches"),
            ("Service.Meta.version not matches \"v.*\"", "matches"),
            ("Service.Tags == canary", "compare a single value"),
            ("Service.Meta[\"version\"] == v1", "indexing"),
            ("(Service.ID == a", "expected `)`"),
            ("Service.ID == a)", "unexpected"),
            ("Service.ID = a", "expected `==`"),
            ("Service.ID == \"a", "unterminated"),
            ("Service.ID == a and", "expected a selector"),
            ("Service.Meta.version is full", "expected `empty`"),
            ("a in Service.Nope", "not supported"),
            ("service.id == a", "not supported"),
        ];
        for (text, want) in cases {
            match Filter::parse(text) {
                Ok(f) => panic!("{text:?} parsed as {f:?}"),
                Err(e) => assert!(e.0.contains(want), "{text:?}: {e}"),
            }
        }
    }
}
