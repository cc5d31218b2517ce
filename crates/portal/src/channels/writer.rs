//! The ledger's writer (see `hub::access::ledger`): applies the hub's
//! `Output::Persist` writes to the store in their order, on a task of its
//! own so the hub never waits on the database, and publishes the sequence
//! number of the last one applied, so a load can wait for every write made
//! before it was asked for.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::hub::GrantWrite;
use crate::store::{Store, StoreError, grants};

/// Writes waiting are applied together, up to this many per transaction.
const BATCH: usize = 256;
/// A batch that fails is tried again this many times, then given up (and
/// logged): loads must not wait forever on a broken database.
const ATTEMPTS: u32 = 5;

/// The hub's side of the writer.
pub(super) struct Writer {
    pub sender: mpsc::UnboundedSender<(u64, GrantWrite)>,
    pub applied: watch::Receiver<u64>,
}

pub(super) fn spawn(store: Store) -> Writer {
    let (sender, mut queue) = mpsc::unbounded_channel::<(u64, GrantWrite)>();
    let (applied_tx, applied) = watch::channel(0u64);
    tokio::spawn(async move {
        while let Some(first) = queue.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match queue.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            let last = batch.last().map_or(0, |(seq, _)| *seq);
            let mut attempt = 0;
            loop {
                attempt += 1;
                match apply(&store, &batch).await {
                    Ok(()) => break,
                    Err(error) if attempt < ATTEMPTS => {
                        tracing::warn!(%error, attempt, "cannot store authorizations; retrying");
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    }
                    Err(error) => {
                        tracing::error!(%error, writes = batch.len(), "authorizations not stored; a restart may not know them");
                        break;
                    }
                }
            }
            applied_tx.send_replace(last);
        }
    });
    Writer { sender, applied }
}

async fn apply(store: &Store, batch: &[(u64, GrantWrite)]) -> Result<(), StoreError> {
    let mut tx = store.write().await?;
    for (_, write) in batch {
        grants::apply(&mut tx, write).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Waits until the writes up to `seq` are applied (or the writer is gone).
pub(super) async fn reached(applied: &mut watch::Receiver<u64>, seq: u64) {
    let _ = applied.wait_for(|done| *done >= seq).await;
}
