//! Gateway selection (F20): among the site's online gateways, on any portal
//! node, one the client already uses, else the least loaded, ties broken at
//! random.

use postern_model::GatewayId;
use postern_model::protocol::Peer;
use uuid::Uuid;

use super::grants::GatewayRoute;
use super::post::Post;

/// A gateway that could serve a request.
#[derive(Debug)]
pub(super) struct Candidate {
    pub route: GatewayRoute,
    pub peer: Peer<GatewayId>,
    /// What its node last announced (this node's count is added).
    pub announced_load: u64,
}

#[derive(Debug)]
pub(super) struct Selection {
    /// xorshift64* state.
    rng: u64,
}

impl Selection {
    pub(super) fn new(seed: u64) -> Self {
        Selection { rng: seed | 1 }
    }

    /// Picks a gateway; `load` counts the clients each serves here.
    pub(super) fn pick(
        &mut self,
        mut candidates: Vec<Candidate>,
        connected: &[GatewayId],
        load: impl Fn(GatewayId) -> u64,
    ) -> Option<Candidate> {
        candidates.sort_by_key(|c| c.peer.id);
        if let Some(index) = candidates
            .iter()
            .position(|c| connected.contains(&c.peer.id))
        {
            return Some(candidates.swap_remove(index));
        }
        let loads: Vec<u64> = candidates
            .iter()
            .map(|c| c.announced_load.max(load(c.peer.id)))
            .collect();
        let least = loads.iter().copied().min()?;
        let mut tied: Vec<Candidate> = candidates
            .into_iter()
            .zip(loads)
            .filter(|(_, load)| *load == least)
            .map(|(candidate, _)| candidate)
            .collect();
        let pick = self.random(tied.len());
        Some(tied.swap_remove(pick))
    }

    /// xorshift64*: picks among equally good gateways; needs no quality.
    fn random(&mut self, bound: usize) -> usize {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1) as u64) as usize
    }
}

/// The site's gateways on any node; one connected here is not taken from
/// another node's stale news.
pub(super) fn candidates(post: &Post, account: Uuid, site: Uuid) -> Vec<Candidate> {
    let presence = post.presence();
    let mut candidates: Vec<Candidate> = presence
        .gateways_at(account, site)
        .into_iter()
        .map(|(conn, peer)| Candidate {
            route: GatewayRoute::Local(conn),
            peer,
            announced_load: 0,
        })
        .collect();
    candidates.extend(
        post.routing()
            .gateways_at(account, site)
            .filter(|(_, peer, _)| presence.gateway(peer.id).is_none())
            .map(|(node, peer, load)| Candidate {
                route: GatewayRoute::Remote(node),
                peer,
                announced_load: load,
            }),
    );
    candidates
}
