//! The scalers of External roles: created, kept current, deleted when stale.

use super::*;

/// The scaler of every External role that lacks one is created (seeded with
/// the role's replicas), this set's scalers of roles that are no longer
/// External are deleted, and the status of the others is kept current.
/// Returns the writes and the replicas each External role asks for.
pub(super) fn scalers(
    set: &DisaggregatedSet,
    existing: &[DisaggregatedSetRoleScaler],
    children: &[Child],
) -> (Vec<Planned>, BTreeMap<String, i32>) {
    let name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let mut writes = Vec::new();
    let mut replicas = BTreeMap::new();
    let planned = |write| Planned { write, scope: None };
    for role in set.spec.roles.iter().filter(|r| r.is_external()) {
        let scaler_name = format!("{name}-{}", role.name);
        let Some(scaler) = existing
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(&scaler_name))
        else {
            let mut s = DisaggregatedSetRoleScaler::new(
                &scaler_name,
                DisaggregatedSetRoleScalerSpec {
                    replicas: role.spec.replicas,
                },
            );
            s.metadata.namespace = set.namespace();
            s.metadata.owner_references = Some(vec![owner_reference(set)]);
            s.metadata.labels = Some(BTreeMap::from([
                (keys::NAME.to_string(), name.clone()),
                (keys::ROLE.to_string(), role.name.clone()),
            ]));
            writes.push(planned(Write::CreateScaler(Box::new(s))));
            replicas.insert(role.name.clone(), role.spec.replicas);
            continue;
        };
        // A scaler of that name this set does not control is left alone.
        if !is_controlled_by(&scaler.metadata, &uid) {
            replicas.insert(role.name.clone(), role.spec.replicas);
            continue;
        }
        replicas.insert(role.name.clone(), scaler.spec.replicas);
        let observed: i32 = children
            .iter()
            .filter(|c| c.owned && c.role == role.name)
            .map(|c| c.status_replicas)
            .sum();
        let selector = format!(
            "{}={name},{}={},leaderworkerset.sigs.k8s.io/worker-index=0",
            keys::NAME,
            keys::ROLE,
            role.name
        );
        let status = scaler.status.clone().unwrap_or_default();
        if status.replicas != Some(observed) || status.selector.as_deref() != Some(&selector) {
            writes.push(planned(Write::ScalerStatus {
                name: scaler_name,
                replicas: observed,
                selector,
                observed_generation: scaler.metadata.generation,
            }));
        }
    }
    for stale in existing.iter().filter(|s| {
        let role = s.labels().get(keys::ROLE).cloned().unwrap_or_default();
        is_controlled_by(&s.metadata, &uid)
            && !set
                .spec
                .roles
                .iter()
                .any(|r| r.is_external() && r.name == role)
    }) {
        writes.push(planned(Write::DeleteScaler {
            name: stale.name_any(),
        }));
    }
    (writes, replicas)
}

/// A scaler's schema is upstream's (no maximum); the operator's bound holds here.
pub(super) fn scaler_violations(
    set: &DisaggregatedSet,
    scaled: &BTreeMap<String, i32>,
) -> Vec<Violation> {
    use disagg_api::limits::MAX_REPLICAS;
    scaled
        .iter()
        .filter(|(_, replicas)| !(0..=MAX_REPLICAS).contains(*replicas))
        .map(|(role, replicas)| Violation {
            field: format!(
                "DisaggregatedSetRoleScaler {}-{role}: spec.replicas",
                set.name_any()
            ),
            message: format!("must be between 0 and {MAX_REPLICAS}, is {replicas}"),
        })
        .collect()
}
