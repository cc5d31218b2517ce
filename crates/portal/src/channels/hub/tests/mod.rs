//! Unit tests of the hub core: inputs in, outputs out, graphs built in
//! memory, the clock moved by hand. No socket, no database.

mod access;
mod evaluation;
mod ledger;
mod presence;
mod relays;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use postern_model::protocol::{
    ClientToPortal, GatewayToPortal, PortalToClient, PortalToGateway, ResourceDescription,
};
use postern_model::{
    ClientId, GatewayId, PublicKey, ResourceAddress, ResourceId, ResourceType, SiteId,
};
use postern_policy::Policy;
use uuid::Uuid;

use super::super::graph::{AccountGraph, ActorFacts};
use super::io::{GrantKey, GrantRecord, GraphLoad, StoredGrant};
use super::{
    ConnId, DeviceFacts, Frame, GrantWrite, Hub, HubConfig, HubSecrets, Inbound, Input, Joined,
    LoadRequest, Loaded, Output, Party, TokenFacts,
};
use crate::domain::Role;

pub(crate) const ACCOUNT: Uuid = Uuid::from_u128(0xa);
pub(crate) const ALICE: Uuid = Uuid::from_u128(0xa1);
pub(crate) const ENGINEERS: Uuid = Uuid::from_u128(0x61);
pub(crate) const SITE: Uuid = Uuid::from_u128(0x51);
pub(crate) const OTHER_SITE: Uuid = Uuid::from_u128(0x52);
pub(crate) const TOKEN: Uuid = Uuid::from_u128(0x70);

/// A resource with an address at `10.0.0.N`, on `SITE`.
pub(crate) fn resource(n: u8) -> ResourceDescription {
    ResourceDescription {
        id: ResourceId::from_u128(0x100 + u128::from(n)),
        name: format!("r{n}"),
        address: ResourceAddress::parse(ResourceType::Ip, Some(&format!("10.0.0.{n}")))
            .unwrap_or_else(|e| panic!("{e}")),
        address_description: None,
        filters: Vec::new(),
        site_id: SiteId(SITE),
    }
}

/// Alice in `ENGINEERS`, resources 1..=`resources`, and a policy giving the
/// group each resource in `allowed`.
pub(crate) fn graph(resources: u8, allowed: &[u8]) -> AccountGraph {
    let mut graph = AccountGraph::default();
    let alice = ActorFacts {
        role: Role::User,
        disabled: false,
    };
    graph.actors.insert(ALICE, alice);
    graph.groups_of.insert(ALICE, vec![ENGINEERS]);
    for n in 1..=resources {
        let r = resource(n);
        graph.resources.insert(r.id.0, std::sync::Arc::new(r));
    }
    for n in allowed {
        graph.policies.upsert(Policy {
            id: Uuid::from_u128(0x200 + u128::from(*n)),
            group_id: ENGINEERS,
            resource_id: resource(*n).id.0,
            conditions: Vec::new(),
            disabled: false,
        });
    }
    graph
}

fn device(id: Uuid) -> DeviceFacts {
    let n = id.as_u128() as u8;
    DeviceFacts {
        id,
        ipv4: Ipv4Addr::new(100, 64, 0, n),
        ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n)),
        verified: false,
        os: None,
    }
}

fn joined(conn: ConnId, party: Party, key: u8) -> Input {
    Input::Joined(Box::new(Joined {
        conn,
        party,
        token: TokenFacts {
            id: TOKEN,
            expires_at: None,
            identity_provider: None,
        },
        public_key: PublicKey([key; 32]),
        remote_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        details: Default::default(),
    }))
}

/// Alice's client device `device` joins on `conn` with key `[key; 32]`.
pub(crate) fn client(conn: ConnId, account: Uuid, id: ClientId, key: u8) -> Input {
    let party = Party::Client {
        account,
        actor_id: ALICE,
        device: device(id.0),
        country: None,
    };
    joined(conn, party, key)
}

/// A gateway of `site` joins on `conn` with key `[key; 32]`.
pub(crate) fn gateway(conn: ConnId, site: Uuid, id: GatewayId, key: u8) -> Input {
    let party = Party::Gateway {
        account: ACCOUNT,
        site_id: site,
        device: device(id.0),
    };
    joined(conn, party, key)
}

pub(crate) fn from_client(conn: ConnId, message: ClientToPortal) -> Input {
    let message = Inbound::Client(message);
    Input::Message { conn, message }
}

pub(crate) fn from_gateway(conn: ConnId, message: GatewayToPortal) -> Input {
    let message = Inbound::Gateway(message);
    Input::Message { conn, message }
}

pub(crate) fn request(conn: ConnId, reference: &str, resource: ResourceId) -> Input {
    from_client(
        conn,
        ClientToPortal::RequestAccess {
            reference: reference.to_string(),
            resource_id: resource,
            connected_gateway_ids: Vec::new(),
        },
    )
}

/// A hub, the two clocks it is given, and a store of the authorizations it
/// wrote (`Output::Persist` applied as the shell would), which loads read.
pub(crate) struct World {
    pub hub: Hub,
    pub now: Instant,
    pub wall: Timestamp,
    pub store: HashMap<GrantKey, GrantRecord>,
    /// The graph each account was last loaded with, for gateway joins.
    graphs: HashMap<Uuid, AccountGraph>,
}

pub(crate) fn config(node: u128) -> HubConfig {
    HubConfig {
        node: Uuid::from_u128(node),
        clustered: false,
        secrets: HubSecrets {
            pair_secret: [7; 32],
            turn_secret: "turn".to_string(),
        },
        authorize_timeout: Duration::from_secs(15),
        pending_per_client: 4,
        seed: 1,
    }
}

impl World {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        World {
            hub: Hub::new(config(0xde), now),
            now,
            wall: Timestamp::from_second(1_900_000_000).unwrap_or_else(|e| panic!("{e}")),
            store: HashMap::new(),
            graphs: HashMap::new(),
        }
    }

    /// A hub that publishes to other nodes (PostgreSQL).
    pub(crate) fn clustered() -> Self {
        let mut world = World::new();
        let mut config = config(0xde);
        config.clustered = true;
        world.hub = Hub::new(config, world.now);
        world
    }

    /// A portal restart: a new hub (another node id) over the same store,
    /// a little later.
    pub(crate) fn restart(&mut self) {
        self.wait(Duration::from_secs(5));
        self.hub = Hub::new(config(0xdf), self.now);
        self.graphs.clear();
    }

    /// Handles an input at the current time; what the hub gave. Writes to
    /// the stored authorizations are applied.
    pub(crate) fn input(&mut self, input: Input) -> Vec<Output> {
        self.hub.handle(self.now, self.wall, input);
        let out: Vec<Output> = std::iter::from_fn(|| self.hub.poll_output()).collect();
        for output in &out {
            if let Output::Persist { write, .. } = output {
                match write {
                    GrantWrite::Put(record) => {
                        self.store.insert(record.key(), (**record).clone());
                    }
                    GrantWrite::Extend { key, expires_at } => {
                        if let Some(record) = self.store.get_mut(key) {
                            record.expires_at = *expires_at;
                        }
                    }
                    GrantWrite::Delete(key) => {
                        self.store.remove(key);
                    }
                }
            }
        }
        out
    }

    /// Both clocks move on.
    pub(crate) fn wait(&mut self, duration: Duration) {
        self.now += duration;
        self.wall += duration;
    }

    /// The account's stored authorizations, everything they name alive.
    pub(crate) fn stored(&self, account: Uuid) -> Vec<StoredGrant> {
        let mut rows: Vec<StoredGrant> = self
            .store
            .values()
            .filter(|r| r.account_id == account)
            .map(|record| StoredGrant {
                record: record.clone(),
                token_live: true,
                client_verified: Some(record.verified),
                gateway_live: true,
            })
            .collect();
        rows.sort_by_key(|r| (r.record.granted_at, r.record.client.id));
        rows
    }

    /// Answers the account's load with `graph` and the stored grants.
    pub(crate) fn loaded(&mut self, account: Uuid, graph: AccountGraph) -> Vec<Output> {
        self.graphs.insert(account, graph.clone());
        let loaded = Loaded {
            graph: GraphLoad::Whole(Box::new(graph)),
            verified: Default::default(),
            grants: Some(self.stored(account)),
        };
        self.input(Input::Loaded {
            account,
            result: Box::new(Ok(loaded)),
        })
    }

    /// A gateway of `site` joins `ACCOUNT`; the load its join asks for is
    /// answered with the account's last graph. Everything given out.
    pub(crate) fn join_gateway(
        &mut self,
        conn: ConnId,
        site: Uuid,
        id: GatewayId,
        key: u8,
    ) -> Vec<Output> {
        let mut out = self.input(gateway(conn, site, id, key));
        if out
            .iter()
            .any(|o| matches!(o, Output::Load(l) if l.account == ACCOUNT))
        {
            let graph = self.graphs.get(&ACCOUNT).cloned().unwrap_or_default();
            out.extend(self.loaded(ACCOUNT, graph));
        }
        out
    }

    /// An account whose graph is in, with Alice's client on conn 1 and a
    /// gateway of `SITE` on conn 2.
    pub(crate) fn with_client_and_gateway(graph: AccountGraph) -> Self {
        let mut world = World::new();
        let load = world.input(client(1, ACCOUNT, CLIENT, 1));
        assert_eq!(
            load,
            vec![Output::Load(LoadRequest {
                account: ACCOUNT,
                clients: vec![],
                rows: None,
                after: 0,
            })]
        );
        assert!(init_of_client(&world.loaded(ACCOUNT, graph), 1).is_some());
        let out = world.join_gateway(2, SITE, GATEWAY, 2);
        assert!(matches!(
            gateway_frames(&out, 2).first(),
            Some(PortalToGateway::Init { .. })
        ));
        world
    }

    /// Request, `authorize`, `authorized`: the client holds a grant of
    /// resource 1 on the gateway of conn 2. Returns the `authorize`.
    pub(crate) fn grant(&mut self) -> PortalToGateway {
        let out = self.input(request(1, "r1", resource(1).id));
        let authorize = gateway_frames(&out, 2)
            .into_iter()
            .find(|m| matches!(m, PortalToGateway::Authorize { .. }))
            .unwrap_or_else(|| panic!("no authorize in {out:?}"));
        let PortalToGateway::Authorize { reference, .. } = &authorize else {
            unreachable!()
        };
        let reference = reference.clone();
        let out = self.input(from_gateway(2, GatewayToPortal::Authorized { reference }));
        assert!(
            client_frames(&out, 1)
                .iter()
                .any(|m| matches!(m, PortalToClient::AccessGranted { .. })),
            "{out:?}"
        );
        authorize
    }
}

pub(crate) const CLIENT: ClientId = ClientId::from_u128(0xc1);
pub(crate) const GATEWAY: GatewayId = GatewayId::from_u128(0x91);

/// The frames for a client connection, in order.
pub(crate) fn client_frames(out: &[Output], conn: ConnId) -> Vec<PortalToClient> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send {
                conn: c,
                frame: Frame::Client(message),
            } if *c == conn => Some(message.clone()),
            _ => None,
        })
        .collect()
}

pub(crate) fn gateway_frames(out: &[Output], conn: ConnId) -> Vec<PortalToGateway> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send {
                conn: c,
                frame: Frame::Gateway(message),
            } if *c == conn => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// The resources in a client's `init`, if one was sent.
pub(crate) fn init_of_client(out: &[Output], conn: ConnId) -> Option<Vec<ResourceId>> {
    client_frames(out, conn).into_iter().find_map(|m| match m {
        PortalToClient::Init { resources, .. } => {
            Some(resources.into_iter().map(|r| r.id).collect())
        }
        _ => None,
    })
}
