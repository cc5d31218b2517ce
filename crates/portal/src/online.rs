//! Who is online right now, as the REST API's `online` fields and the
//! metrics show it. The channel hub decides presence and publishes it here;
//! readers take a short lock. A leaf, so the shared state can hold it
//! without depending on the channels.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use uuid::Uuid;

#[derive(Debug, Default)]
pub struct Online {
    tables: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    /// Gateway device id -> clients it serves.
    gateways: HashMap<Uuid, u64>,
    clients: HashSet<Uuid>,
}

impl Online {
    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic elsewhere while holding the lock leaves plain tables behind.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gateways and clients online.
    pub fn counts(&self) -> (usize, usize) {
        let tables = self.tables();
        (tables.gateways.len(), tables.clients.len())
    }

    /// Whether a gateway is online, and how many clients it serves.
    pub fn gateway(&self, gateway: Uuid) -> (bool, u64) {
        match self.tables().gateways.get(&gateway) {
            Some(load) => (true, *load),
            None => (false, 0),
        }
    }

    /// How many of these clients are online (one lock for all).
    pub fn clients_among(&self, clients: &[Uuid]) -> usize {
        let tables = self.tables();
        clients
            .iter()
            .filter(|c| tables.clients.contains(c))
            .count()
    }

    pub fn client(&self, client: Uuid) -> bool {
        self.tables().clients.contains(&client)
    }

    /// `None` takes the gateway offline.
    pub fn set_gateway(&self, gateway: Uuid, load: Option<u64>) {
        let mut tables = self.tables();
        match load {
            Some(load) => tables.gateways.insert(gateway, load),
            None => tables.gateways.remove(&gateway),
        };
    }

    pub fn set_client(&self, client: Uuid, online: bool) {
        let mut tables = self.tables();
        if online {
            tables.clients.insert(client);
        } else {
            tables.clients.remove(&client);
        }
    }
}
