//! Events, recorded off the reconcile path. An Event is a write to the API
//! server like any other; a reconcile that waited for its Events would hold
//! its set's next step (and a `--concurrency` slot) for a round trip per
//! Event. So reconciles hand Events to one background task, which records
//! them in order with kube-rs's [`Recorder`] (a repeat of the same Event
//! becomes a series on the first one, as `kubectl describe` shows it).
//!
//! Events are best-effort in Kubernetes, and so here: when the API server is
//! slower than the operator makes Events for long enough to fill
//! [`QUEUE`], new ones are dropped and counted
//! (`disagg_events_total{result="dropped"}`), and Events still queued when
//! the operator stops are not recorded.

use super::metrics::Metrics;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Events waiting to be recorded, at most.
pub const QUEUE: usize = 4096;

/// Where reconciles and the plugin loader send Events. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    queue: mpsc::Sender<(ObjectReference, Event)>,
    metrics: Arc<Metrics>,
}

impl Events {
    /// Starts the task that records Events with `recorder`.
    pub fn start(recorder: Recorder, metrics: Arc<Metrics>) -> Events {
        let (queue, mut waiting) = mpsc::channel::<(ObjectReference, Event)>(QUEUE);
        let counted = metrics.clone();
        tokio::spawn(async move {
            while let Some((reference, event)) = waiting.recv().await {
                let recorded = recorder.publish(&event, &reference).await;
                if let Err(e) = &recorded {
                    tracing::warn!(error = %e, object = ?reference.name, reason = %event.reason, "cannot record an Event");
                }
                counted.event(if recorded.is_ok() { "ok" } else { "error" });
            }
        });
        Events { queue, metrics }
    }

    /// Queues an Event on the object `reference` names; never waits.
    pub fn record(
        &self,
        reference: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(disagg_core::text::truncate(note, 1000)),
            action: action.into(),
            secondary: None,
        };
        if self.queue.try_send((reference, event)).is_err() {
            tracing::warn!(reason, "the Event queue is full; Event dropped: {note}");
            self.metrics.event("dropped");
        }
    }
}
