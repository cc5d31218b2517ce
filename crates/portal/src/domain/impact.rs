//! What a change affects: rules that the REST API shares with the web admin
//! and SCIM to come, so that each tells continuous evaluation (F15) the same.
//! Pure functions over rows the caller has loaded in its transaction.

use uuid::Uuid;

use super::Resource;

/// The resources deleting `site` takes with it (the database cascades them,
/// and their policies): their clients and gateways must hear.
pub fn deleted_with_site(site: Uuid, resources: &[Resource]) -> Vec<Uuid> {
    resources
        .iter()
        .filter(|r| r.site_id == site)
        .map(|r| r.id)
        .collect()
}

/// The actors whose access replacing a group's members `before` with `after`
/// can change: who left and who joined, sorted. Who stayed keeps what the
/// group gave.
pub fn membership_changes(before: &[Uuid], after: &[Uuid]) -> Vec<Uuid> {
    let mut changed: Vec<Uuid> = before
        .iter()
        .filter(|a| !after.contains(a))
        .chain(after.iter().filter(|a| !before.contains(a)))
        .copied()
        .collect();
    changed.sort_unstable();
    changed
}

#[cfg(test)]
mod tests {
    use postern_model::ResourceType;

    use super::*;

    fn resource(id: u128, site: u128) -> Resource {
        Resource {
            id: Uuid::from_u128(id),
            site_id: Uuid::from_u128(site),
            name: format!("r{id}"),
            kind: ResourceType::Internet,
            address: None,
            address_description: None,
            filters: Vec::new(),
            exclusions: Vec::new(),
            created_at: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_site_takes_only_its_own_resources() {
        let all = [resource(1, 10), resource(2, 20), resource(3, 10)];
        assert_eq!(
            deleted_with_site(Uuid::from_u128(10), &all),
            [Uuid::from_u128(1), Uuid::from_u128(3)]
        );
        assert!(deleted_with_site(Uuid::from_u128(30), &all).is_empty());
    }

    #[test]
    fn who_left_and_who_joined_but_not_who_stayed() {
        let [a, b, c, d] = [4, 3, 2, 1].map(Uuid::from_u128);
        assert_eq!(membership_changes(&[a, b, c], &[c, d]), [d, b, a]);
        assert!(membership_changes(&[a, b], &[b, a]).is_empty());
        assert_eq!(membership_changes(&[], &[a]), [a]);
    }
}
