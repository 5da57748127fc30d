//! Label selectors in the API server's text form: `a=b`, `a==b`, `a!=b`,
//! `a in (x,y)`, `a notin (x)`, `a` (exists), `!a` (does not exist),
//! comma-separated and ANDed.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for term in split_terms(text)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            reqs.push(parse_term(term)?);
        }
        Ok(Selector(reqs))
    }

    /// Whether an object's labels, looked up by key, satisfy every requirement
    /// (a lookup, not a map, so that lists need not copy each object's labels).
    pub fn matches<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        let one_of = |vs: &[String], l: &str| vs.iter().any(|v| v == l);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| one_of(vs, l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| !one_of(vs, l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(format!("unbalanced ')' in selector {text:?}"));
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in selector {text:?}"));
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        if k.is_empty() || k.contains(char::is_whitespace) {
            Err(format!("invalid label key {k:?} in {term:?}"))
        } else {
            Ok(k.to_string())
        }
    };
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key(k)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k)?, v.trim().to_string()));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(key(k)?, v.trim().to_string()));
    }
    for (op, notin) in [(" notin ", true), (" in ", false)] {
        if let Some((k, rest)) = term.split_once(op) {
            let rest = rest.trim();
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("expected a parenthesised list in {term:?}"))?;
            let values = inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            return Ok(if notin {
                Requirement::NotIn(key(k)?, values)
            } else {
                Requirement::In(key(k)?, values)
            });
        }
    }
    Ok(Requirement::Exists(key(term)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches_every_operator() {
        let s = Selector::parse(
            "app=llm, tier!=cache,role in (prefill, decode),zone notin (z9),gpu,!legacy",
        )
        .unwrap();
        assert_eq!(s.0.len(), 6);
        let ok = labels(&[
            ("app", "llm"),
            ("role", "decode"),
            ("zone", "z1"),
            ("gpu", ""),
        ]);
        assert!(s.matches(|k| ok.get(k).map(String::as_str)));
        for (k, v) in [
            ("app", "other"),
            ("tier", "cache"),
            ("role", "encode"),
            ("zone", "z9"),
            ("legacy", "1"),
        ] {
            let mut l = ok.clone();
            l.insert(k.into(), v.into());
            assert!(!s.matches(|k| l.get(k).map(String::as_str)), "{k}={v}");
        }
        let mut l = ok.clone();
        l.remove("gpu");
        assert!(!s.matches(|k| l.get(k).map(String::as_str)));
        assert!(Selector::parse("").unwrap().matches(|_| None));
        assert_eq!(
            Selector::parse("a==b").unwrap(),
            Selector(vec![Requirement::Equals("a".into(), "b".into())])
        );
    }

    #[test]
    fn rejects_malformed_selectors() {
        for bad in ["a in (x", "a in x", "a)", "=b", "a b"] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }
}
