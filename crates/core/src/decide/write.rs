//! The writes a plan makes, and the Events they record.

use super::*;

/// One API write.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// A plain create: an object that already holds the name is never adopted.
    CreateScaler(Box<DisaggregatedSetRoleScaler>),
    /// A merge patch of a scaler's status subresource.
    ScalerStatus {
        name: String,
        replicas: i32,
        selector: String,
        observed_generation: Option<i64>,
    },
    DeleteScaler {
        name: String,
    },
    /// A plain create, like [`Write::CreateScaler`].
    CreateChild(Box<LeaderWorkerSet>),
    /// A merge patch of `spec.replicas`.
    ScaleChild {
        name: String,
        replicas: i32,
    },
    /// A merge patch setting (`Some`) or removing (`None`) the rollout
    /// marks (`initial-replicas`, `rollout-target`), and `spec.replicas` with
    /// them when `replicas` is set.
    MarkChild {
        name: String,
        mark: Option<Mark>,
        replicas: Option<i32>,
    },
    DeleteChild {
        name: String,
    },
    /// A merge patch of the set's own `abort` and `abort-revision`
    /// annotations: a gate asked for the rollout to `revision` to be aborted.
    AbortSet {
        reason: String,
        revision: String,
    },
}

/// A child's role and slice. A child write the API server refuses stops the
/// rest of its scope's writes in this reconcile (their order keeps the
/// rollout's bounds), not other roles' or slices'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub role: String,
    pub slice: i32,
}

/// A write and the child scope it belongs to (none for scalers and for
/// children outside the set's slices).
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub write: Write,
    pub scope: Option<Scope>,
}

impl Write {
    /// The name of the object written.
    pub fn object(&self) -> &str {
        match self {
            Write::CreateScaler(s) => s.metadata.name.as_deref().unwrap_or_default(),
            Write::CreateChild(c) => c.metadata.name.as_deref().unwrap_or_default(),
            Write::ScalerStatus { name, .. }
            | Write::DeleteScaler { name }
            | Write::ScaleChild { name, .. }
            | Write::MarkChild { name, .. }
            | Write::DeleteChild { name } => name,
            Write::AbortSet { .. } => "",
        }
    }

    /// Whether it writes a child LeaderWorkerSet.
    pub fn is_child(&self) -> bool {
        matches!(
            self,
            Write::CreateChild(_)
                | Write::ScaleChild { .. }
                | Write::MarkChild { .. }
                | Write::DeleteChild { .. }
        )
    }

    /// How a refusal of it is described: "cannot scale LeaderWorkerSet x: why".
    pub fn refused(&self, why: &str) -> String {
        let verb = match self {
            Write::CreateScaler(_) | Write::CreateChild(_) => "cannot create",
            Write::ScaleChild { .. } => "cannot scale",
            Write::MarkChild { replicas: None, .. } => "cannot annotate",
            Write::MarkChild { .. } => "cannot scale",
            Write::ScalerStatus { .. } => "cannot update the status of",
            Write::AbortSet { .. } => "cannot annotate",
            Write::DeleteScaler { .. } | Write::DeleteChild { .. } => "cannot delete",
        };
        let kind = if self.is_child() {
            "LeaderWorkerSet"
        } else if matches!(self, Write::AbortSet { .. }) {
            "the set"
        } else {
            "DisaggregatedSetRoleScaler"
        };
        format!("{verb} {kind} {}: {why}", self.object())
    }

    /// The Event recorded once it succeeded (a delete of an object already
    /// gone records none; the executor knows).
    pub fn event(&self) -> Option<Event> {
        let normal = |reason, action, note| Some(Event::normal(reason, action, note));
        match self {
            Write::CreateScaler(s) => normal(
                "CreatedScaler",
                "Scale",
                format!(
                    "created DisaggregatedSetRoleScaler {} for External role {} at {} replicas",
                    self.object(),
                    s.labels().get(keys::ROLE).cloned().unwrap_or_default(),
                    s.spec.replicas
                ),
            ),
            Write::DeleteScaler { name } => normal(
                "DeletedScaler",
                "Scale",
                format!(
                    "deleted DisaggregatedSetRoleScaler {name}: its role is no longer External"
                ),
            ),
            Write::CreateChild(c) => {
                let label = |k: &str| c.labels().get(k).cloned().unwrap_or_default();
                normal(
                    "CreatedChild",
                    "Rollout",
                    format!(
                        "created LeaderWorkerSet {} (role {}, slice {}, revision {}) at {} replicas",
                        self.object(),
                        label(keys::ROLE),
                        label(keys::SLICE),
                        label(keys::REVISION),
                        c.spec.replicas
                    ),
                )
            }
            Write::ScaleChild { name, replicas } => normal(
                "ScaledChild",
                "Rollout",
                format!("scaled LeaderWorkerSet {name} to {replicas} replicas"),
            ),
            Write::DeleteChild { name } => normal(
                "DeletedChild",
                "Rollout",
                format!("deleted LeaderWorkerSet {name}"),
            ),
            Write::MarkChild {
                name,
                replicas: Some(replicas),
                mark: Some(mark),
            } => normal(
                "ScaledChild",
                "Rollout",
                format!(
                    "scaled LeaderWorkerSet {name} to {replicas} replicas: its role's target changed to {} during the rollout",
                    mark.target
                ),
            ),
            Write::AbortSet { reason, revision } => Some(Event::warning(
                "RolloutAborted",
                "Rollout",
                format!("rollout to {revision} aborted {reason}"),
            )),
            Write::ScalerStatus { .. } | Write::MarkChild { .. } => None,
        }
    }
}

/// An Event on the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

impl Event {
    pub fn normal(reason: &'static str, action: &'static str, note: String) -> Event {
        Event {
            warning: false,
            reason,
            action,
            note,
        }
    }

    pub fn warning(reason: &'static str, action: &'static str, note: String) -> Event {
        Event {
            warning: true,
            ..Event::normal(reason, action, note)
        }
    }

    /// One Event per kind (type, reason, action) in first-seen order, the
    /// notes of each kind joined: a reconcile that creates a set's three
    /// children records one `CreatedChild` naming all three. Every Event is a
    /// write to the API server, as many as the operator's own writes. (The
    /// operator cuts a note past an Event's 1 KiB, saying how long it was:
    /// a many-slice set's first reconcile names its first children only.)
    pub fn merge(events: impl IntoIterator<Item = Event>) -> Vec<Event> {
        let mut merged: Vec<Event> = Vec::new();
        for event in events {
            match merged.iter_mut().find(|m| {
                (m.warning, m.reason, m.action) == (event.warning, event.reason, event.action)
            }) {
                Some(m) => {
                    m.note.push_str("; ");
                    m.note.push_str(&event.note);
                }
                None => merged.push(event),
            }
        }
        merged
    }
}

/// A child write the API server refused, or one waiting out its backoff after that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteFailure {
    pub child: String,
    /// From [`Write::refused`].
    pub message: String,
    pub retry_in: Duration,
    /// Refused in this reconcile (not only waiting): worth an Event.
    pub new: bool,
}
