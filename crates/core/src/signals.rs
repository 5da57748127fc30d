//! Signals (`spec.plugins[].signals`, contract 0.2.0): a binding's PromQL
//! queries, templated for one request and evaluated through [`Signals`] —
//! the operator's Prometheus client, or a fake in tests. The plugin gets the
//! samples or the reason there are none; it never sees a URL or credentials.
//!
//! Placeholders: `{{set}}`, `{{namespace}}`, `{{slice}}`, `{{role}}`,
//! `{{revision}}` (the revision rolled out to, or the set's), `{{oldRevision}}`
//! (the one it replaces; the set's own when none). A query naming `{{role}}`
//! is evaluated once per role of the request.

use crate::plugins::{Sample, Signal};
use disagg_api::set::SignalQuery;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// One evaluation's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluated {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub samples: Result<Vec<Sample>, String>,
}

/// Where queries are evaluated. An implementation evaluates each distinct
/// query at most once per decide (the operator's is created per reconcile).
pub trait Signals {
    fn evaluate(&self, query: &str) -> Evaluated;
}

/// No Prometheus configured: every signal says so.
pub struct NoSignals;

impl Signals for NoSignals {
    fn evaluate(&self, _query: &str) -> Evaluated {
        Evaluated {
            at_ms: 0,
            samples: Err(
                "no Prometheus is configured: run the operator with --prometheus-url (DISAGG_PROMETHEUS_URL)"
                    .into(),
            ),
        }
    }
}

/// The values a request substitutes.
#[derive(Clone, Debug)]
pub struct Vars<'a> {
    pub set: &'a str,
    pub namespace: &'a str,
    pub slice: i32,
    pub revision: &'a str,
    pub old_revision: &'a str,
}

/// Evaluates bindings' signals for requests, and remembers which failed
/// (for the set's `SignalsReady` condition).
pub struct Evaluator<'a> {
    signals: &'a dyn Signals,
    /// Signal name (`binding/signal`) → why it has no samples.
    errors: RefCell<BTreeMap<String, String>>,
}

impl<'a> Evaluator<'a> {
    pub fn new(signals: &'a dyn Signals) -> Self {
        Evaluator {
            signals,
            errors: RefCell::new(BTreeMap::new()),
        }
    }

    /// `binding`'s signals for one request: per role (of `roles`) for
    /// queries naming `{{role}}`, once otherwise.
    pub fn evaluate(
        &self,
        binding: &str,
        queries: &[SignalQuery],
        vars: &Vars<'_>,
        roles: &[&str],
    ) -> Vec<Signal> {
        let mut out = Vec::new();
        for q in queries {
            let per_role = q.query.contains("{{role}}") || q.query.contains("{{ role }}");
            let scopes: Vec<Option<&str>> = if per_role {
                roles.iter().map(|r| Some(*r)).collect()
            } else {
                vec![None]
            };
            for role in scopes {
                let query = render(&q.query, vars, role);
                let e = self.signals.evaluate(&query);
                let (samples, error) = match e.samples {
                    Ok(s) => (s, None),
                    Err(why) => {
                        self.errors
                            .borrow_mut()
                            .insert(format!("{binding}/{}", q.name), why.clone());
                        (Vec::new(), Some(why))
                    }
                };
                out.push(Signal {
                    name: q.name.clone(),
                    role: role.map(str::to_string),
                    evaluated_at_ms: e.at_ms,
                    samples,
                    error,
                });
            }
        }
        out
    }

    /// Signals that had no samples because evaluation failed, as (name, why).
    pub fn errors(&self) -> BTreeMap<String, String> {
        self.errors.borrow().clone()
    }
}

/// `query` with its placeholders replaced (whitespace inside braces allowed).
pub fn render(query: &str, vars: &Vars<'_>, role: Option<&str>) -> String {
    let slice = vars.slice.to_string();
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let value = match after[..end].trim() {
            "set" => vars.set,
            "namespace" => vars.namespace,
            "slice" => &slice,
            "role" => role.unwrap_or_default(),
            "revision" => vars.revision,
            "oldRevision" => vars.old_revision,
            // Validation refuses unknown placeholders; keep one as written.
            _ => &rest[start..start + 2 + end + 2],
        };
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Answers every query with one sample, or an error for queries naming "down";
    /// records what it was asked.
    struct Fake(RefCell<Vec<String>>);

    impl Signals for Fake {
        fn evaluate(&self, query: &str) -> Evaluated {
            self.0.borrow_mut().push(query.to_string());
            Evaluated {
                at_ms: 7,
                samples: if query.contains("down") {
                    Err("Prometheus unreachable: connection refused".into())
                } else {
                    Ok(vec![Sample {
                        labels: vec![],
                        value: 1.5,
                    }])
                },
            }
        }
    }

    fn query(name: &str, query: &str) -> SignalQuery {
        SignalQuery {
            name: name.into(),
            query: query.into(),
        }
    }

    #[test]
    fn placeholders_are_filled_and_role_queries_run_per_role() {
        let vars = Vars {
            set: "llm",
            namespace: "ml",
            slice: 2,
            revision: "bbbb",
            old_revision: "aaaa",
        };
        assert_eq!(
            render(
                r#"x{s="{{set}}",n="{{ namespace }}",i="{{slice}}",r="{{revision}}",o="{{oldRevision}}",q="{{role}}"}"#,
                &vars,
                Some("decode")
            ),
            r#"x{s="llm",n="ml",i="2",r="bbbb",o="aaaa",q="decode"}"#
        );
        let fake = Fake(RefCell::new(Vec::new()));
        let e = Evaluator::new(&fake);
        let got = e.evaluate(
            "gate",
            &[
                query("ttft", "t{r=\"{{revision}}\"}"),
                query("queue", "q{role=\"{{role}}\"}"),
                query("broken", "down{}"),
            ],
            &vars,
            &["prefill", "decode"],
        );
        let names: Vec<(&str, Option<&str>)> = got
            .iter()
            .map(|s| (s.name.as_str(), s.role.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("ttft", None),
                ("queue", Some("prefill")),
                ("queue", Some("decode")),
                ("broken", None)
            ]
        );
        assert_eq!(got[0].samples[0].value, 1.5);
        assert_eq!(got[0].evaluated_at_ms, 7);
        assert_eq!(
            got[3].error.as_deref(),
            Some("Prometheus unreachable: connection refused")
        );
        assert!(got[3].samples.is_empty());
        assert_eq!(
            fake.0.borrow().as_slice(),
            [
                "t{r=\"bbbb\"}",
                "q{role=\"prefill\"}",
                "q{role=\"decode\"}",
                "down{}"
            ]
        );
        assert_eq!(
            e.errors().into_iter().collect::<Vec<_>>(),
            [(
                "gate/broken".to_string(),
                "Prometheus unreachable: connection refused".to_string()
            )]
        );
        // Without Prometheus every signal says how to configure one.
        let none = Evaluator::new(&NoSignals);
        let got = none.evaluate("gate", &[query("ttft", "t")], &vars, &[]);
        assert!(
            got[0]
                .error
                .as_deref()
                .unwrap()
                .contains("--prometheus-url")
        );
    }
}
