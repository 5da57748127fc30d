//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas
//! can run: one reconciles, the other waits to take over. The Lease is
//! written with optimistic concurrency (its resourceVersion), so two
//! candidates can never both believe they won the same round.
//!
//! The leader renews every third of the lease duration, each attempt cut
//! off after a fifth of it (a hung API server cannot hold a renewal). If it
//! cannot renew within two thirds of the duration, it stops leading: the
//! controller is dropped mid-flight (no write it had under way is finished)
//! and the operator exits to be restarted. That is before anyone else may
//! take over: a standby takes a Lease only once it has seen the same
//! holder and renewTime, unchanged, for a whole lease duration of its *own*
//! clock (as client-go does), so a skewed clock on either side cannot make
//! two leaders.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;

/// The Lease the operator's replicas share.
pub const LEASE_NAME: &str = "disaggregatedset-operator";
/// How soon a failed renewal is tried again.
const RETRY: Duration = Duration::from_millis(200);

pub struct Elector {
    api: Api<Lease>,
    identity: String,
    duration: Duration,
    /// The other holder's record (holder, renewTime) as last seen, and when
    /// this replica first saw it.
    observed: std::sync::Mutex<Option<(String, tokio::time::Instant)>>,
}

impl Elector {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        identity: String,
        duration: Duration,
    ) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            identity,
            duration,
            observed: std::sync::Mutex::new(None),
        }
    }

    /// One round, given up after a fifth of the lease duration.
    async fn round(&self) -> Result<bool, String> {
        match tokio::time::timeout(self.duration / 5, self.try_acquire_or_renew()).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "no answer within {} ms",
                (self.duration / 5).as_millis()
            )),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        let mut announced = false;
        loop {
            match self.round().await {
                Ok(true) => return,
                Ok(false) => {
                    if !announced {
                        tracing::info!(identity = %self.identity, "standing by: another replica leads");
                        announced = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: cannot read or write the Lease")
                }
            }
            tokio::time::sleep(self.duration / 5).await;
        }
    }

    /// Renews the Lease until renewal fails for two thirds of its duration;
    /// then returns (leadership is lost).
    pub async fn keep(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        let mut failed = false;
        loop {
            // After a failed renewal, try again soon: the Lease must be renewed
            // within two thirds of its duration or leadership is given up.
            let pause = if failed { RETRY } else { self.duration / 3 };
            tokio::time::sleep(pause.min(self.duration / 3)).await;
            match self.round().await {
                Ok(true) => {
                    last_renewed = tokio::time::Instant::now();
                    failed = false;
                }
                Ok(false) => {
                    tracing::error!(identity = %self.identity, "leader election: another replica holds the Lease");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: renewing the Lease failed");
                    failed = true;
                }
            }
            if last_renewed.elapsed() > self.duration * 2 / 3 {
                tracing::error!(identity = %self.identity, "leader election: could not renew the Lease in time");
                return;
            }
        }
    }

    /// Gives the Lease up (on shutdown), so a standby need not wait for it to expire.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(&self.identity)
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            let _ = self
                .api
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await;
        }
    }

    /// One round: `Ok(true)` when this replica holds the Lease afterwards.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let seconds = self.duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let mine = spec.holder_identity.as_deref() == Some(&self.identity);
        let held = spec
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty());
        // Expiry by this replica's own clock: the record must stay unchanged
        // for the holder's whole lease duration since this replica first saw it.
        let record = format!(
            "{:?}/{:?}",
            spec.holder_identity,
            spec.renew_time.as_ref().map(|t| t.0.as_millisecond())
        );
        let lease_for = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        let expired = {
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            match observed.as_ref() {
                Some((seen, since)) if *seen == record => since.elapsed() > lease_for,
                _ => {
                    *observed = Some((record, tokio::time::Instant::now()));
                    spec.renew_time.is_none()
                }
            }
        };
        if !mine && held && !expired {
            return Ok(false);
        }
        if !mine {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(seconds);
        // Conditional on the version read: a competing write makes this a 409, and we lose the round.
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Taking over: someone else wrote first, and holds it.
            Err(kube::Error::Api(e)) if e.code == 409 && !mine => Ok(false),
            // Renewing: the Lease changed since it was read; read it again
            // before concluding anything (it may still be ours).
            Err(e) => Err(e),
        }
    }
}
