//! Key templates: `"tenant:{tenant_id}"`, `"job:{self.id}"`, `"pair:{p.0}"`.
//!
//! Grammar: text with placeholders `{path}`; `{{` and `}}` are literal
//! braces. A path is `root(.member)*` where `root` is an argument name or
//! `self`, and a member is a field name or a tuple index. No format specs,
//! no positional or empty placeholders. Values are formatted with `Display`.

use proc_macro2::Ident;

/// A parsed key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub pieces: Vec<Piece>,
}

/// A run of text or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text, braces already unescaped.
    Text(String),
    /// `{path}`.
    Placeholder(Placeholder),
}

/// `{root.member.member}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// The text between the braces, for messages.
    pub text: String,
    pub root: Root,
    pub members: Vec<Member>,
}

/// The first segment of a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// `self`.
    SelfValue,
    /// An argument name.
    Arg(Ident),
}

/// A field name or a tuple index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Named(Ident),
    Index(u32),
}

impl Template {
    /// The placeholders, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Placeholder(ph) => Some(ph),
            Piece::Text(_) => None,
        })
    }

    /// The literal key when the template has no placeholders.
    pub fn as_literal(&self) -> Option<String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Placeholder(_) => return None,
            }
        }
        Some(out)
    }

    /// The `format!` string: text with braces escaped, `{}` per placeholder.
    pub fn format_string(&self) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(&t.replace('{', "{{").replace('}', "}}")),
                Piece::Placeholder(_) => out.push_str("{}"),
            }
        }
        out
    }
}

/// Parses a key template, returning every problem found (one message each).
#[cfg(test)]
pub fn parse(text: &str) -> Result<Template, Vec<String>> {
    let (template, errors) = parse_partial(text);
    if errors.is_empty() {
        Ok(template)
    } else {
        Err(errors)
    }
}

/// Parses a key template; the template holds the valid placeholders even
/// when there are errors, so that their names can still be checked.
pub fn parse_partial(text: &str) -> (Template, Vec<String>) {
    let mut pieces = Vec::new();
    let mut errors = Vec::new();
    let mut buf = String::new();
    let mut chars = text.char_indices().peekable();

    while let Some((_, c)) = chars.next() {
        match c {
            '{' if matches!(chars.peek(), Some((_, '{'))) => {
                chars.next();
                buf.push('{');
            }
            '}' if matches!(chars.peek(), Some((_, '}'))) => {
                chars.next();
                buf.push('}');
            }
            '}' => errors.push(format!(
                "unmatched `}}` in key template {text:?}: write `}}}}` for a literal brace"
            )),
            '{' => {
                // Read up to the closing brace; a second `{` first means this
                // one is never closed.
                let mut inner = String::new();
                let mut closed = false;
                while let Some(&(_, c)) = chars.peek() {
                    if c == '{' {
                        break;
                    }
                    chars.next();
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    inner.push(c);
                }
                if !closed {
                    errors.push(format!(
                        "unclosed `{{` in key template {text:?}: close the placeholder with `}}`, or write `{{{{` for a literal brace"
                    ));
                    continue;
                }
                match parse_placeholder(&inner) {
                    Ok(ph) => {
                        if !buf.is_empty() {
                            pieces.push(Piece::Text(std::mem::take(&mut buf)));
                        }
                        pieces.push(Piece::Placeholder(ph));
                    }
                    Err(e) => errors.push(e),
                }
            }
            c => buf.push(c),
        }
    }
    if !buf.is_empty() {
        pieces.push(Piece::Text(buf));
    }
    (Template { pieces }, errors)
}

const PLACEHOLDER_FORM: &str =
    "a placeholder is an argument name, optionally followed by `.field` or `.0`, e.g. `{tenant_id}`, `{self.id}` or `{job.tenant.id}`";

fn parse_placeholder(inner: &str) -> Result<Placeholder, String> {
    if inner.is_empty() {
        return Err(
            "empty placeholder `{}` in key template: name the argument to put there, e.g. `{tenant_id}`; write `{{}}` for literal braces"
                .to_string(),
        );
    }
    if let Some((name, spec)) = inner.split_once(':') {
        let fix = if name.trim().is_empty() {
            "name an argument, e.g. `{tenant_id}`".to_string()
        } else {
            format!("write `{{{}}}`", name.trim())
        };
        return Err(format!(
            "format spec `:{spec}` in placeholder `{{{inner}}}` is not supported: key template values are formatted with `Display`; {fix}"
        ));
    }
    if inner.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "positional placeholder `{{{inner}}}` is not supported in a key template: name the argument, e.g. `{{tenant_id}}`"
        ));
    }
    if inner.chars().any(char::is_whitespace) {
        let compact: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
        return Err(format!(
            "placeholder `{{{inner}}}` must not contain whitespace: write `{{{compact}}}`"
        ));
    }
    let invalid =
        || format!("invalid placeholder `{{{inner}}}` in key template: {PLACEHOLDER_FORM}");

    let mut segments = inner.split('.');
    let first = segments.next().unwrap_or_default();
    let root = if first == "self" {
        Root::SelfValue
    } else {
        Root::Arg(syn::parse_str::<Ident>(first).map_err(|_| invalid())?)
    };
    let mut members = Vec::new();
    for seg in segments {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            if seg.len() > 1 && seg.starts_with('0') {
                return Err(invalid());
            }
            members.push(Member::Index(seg.parse().map_err(|_| invalid())?));
        } else {
            members.push(Member::Named(
                syn::parse_str::<Ident>(seg).map_err(|_| invalid())?,
            ));
        }
    }
    Ok(Placeholder {
        text: inner.to_string(),
        root,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Template {
        parse(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"))
    }

    fn errs(text: &str) -> Vec<String> {
        parse(text).expect_err(text)
    }

    fn root_name(ph: &Placeholder) -> String {
        match &ph.root {
            Root::SelfValue => "self".into(),
            Root::Arg(id) => id.to_string(),
        }
    }

    #[test]
    fn literal_without_placeholders() {
        let t = ok("report:daily");
        assert_eq!(t.as_literal().as_deref(), Some("report:daily"));
        assert_eq!(t.format_string(), "report:daily");
    }

    #[test]
    fn escaped_braces() {
        let t = ok("a{{b}}c");
        assert_eq!(t.as_literal().as_deref(), Some("a{b}c"));
        assert_eq!(t.format_string(), "a{{b}}c");

        let t = ok("{{{x}}}");
        assert_eq!(t.as_literal(), None);
        assert_eq!(t.format_string(), "{{{}}}");
    }

    #[test]
    fn placeholders() {
        let t = ok("tenant:{tenant_id}:{self.id}/{job.tenant.id}-{pair.0}");
        assert_eq!(t.format_string(), "tenant:{}:{}/{}-{}");
        let phs: Vec<_> = t.placeholders().collect();
        assert_eq!(phs.len(), 4);
        assert_eq!(root_name(phs[0]), "tenant_id");
        assert_eq!(phs[1].root, Root::SelfValue);
        assert_eq!(phs[1].members.len(), 1);
        assert_eq!(root_name(phs[2]), "job");
        assert_eq!(phs[2].members.len(), 2);
        assert_eq!(phs[3].members, vec![Member::Index(0)]);
        assert_eq!(phs[3].text, "pair.0");
    }

    #[test]
    fn whole_key_is_a_placeholder() {
        let t = ok("{name}");
        assert_eq!(t.format_string(), "{}");
        assert_eq!(t.pieces.len(), 1);
    }

    #[test]
    fn raw_identifiers_and_unicode() {
        let t = ok("{r#type}:{größe}");
        assert_eq!(t.placeholders().count(), 2);
    }

    #[test]
    fn unbalanced() {
        assert!(errs("a{b")[0].starts_with("unclosed `{`"));
        assert!(errs("a}b")[0].starts_with("unmatched `}`"));
        assert!(errs("{a{b}")[0].starts_with("unclosed `{`"));
        assert!(errs("{")[0].starts_with("unclosed `{`"));
    }

    #[test]
    fn bad_placeholders() {
        assert!(errs("x{}")[0].starts_with("empty placeholder"));
        assert!(errs("x{0}")[0].starts_with("positional placeholder `{0}`"));
        let e = &errs("x{id:?}")[0];
        assert!(
            e.starts_with("format spec `:?` in placeholder `{id:?}`"),
            "{e}"
        );
        assert!(e.ends_with("write `{id}`"), "{e}");
        assert!(errs("{ id }")[0].contains("write `{id}`"));
        assert!(errs("{a.}")[0].starts_with("invalid placeholder `{a.}`"));
        assert!(errs("{.a}")[0].starts_with("invalid placeholder"));
        assert!(errs("{a..b}")[0].starts_with("invalid placeholder"));
        assert!(errs("{a.len()}")[0].starts_with("invalid placeholder"));
        assert!(errs("{a.01}")[0].starts_with("invalid placeholder"));
        assert!(errs("{type}")[0].starts_with("invalid placeholder"));
        assert!(errs("{x-y}")[0].starts_with("invalid placeholder"));
    }

    #[test]
    fn partial_template_keeps_valid_placeholders() {
        let (t, e) = parse_partial("{a}:{b:?}:{c}");
        assert_eq!(e.len(), 1);
        let names: Vec<_> = t.placeholders().map(root_name).collect();
        assert_eq!(names, ["a", "c"]);
    }

    #[test]
    fn all_errors_reported() {
        let e = errs("{}:{0}:{a:x}:}");
        assert_eq!(e.len(), 4, "{e:?}");
    }
}
