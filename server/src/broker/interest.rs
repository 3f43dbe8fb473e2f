//! The workers' topic interest, counted per topic: a topic is held by the
//! node while any worker holds it. Events are taken in batches; a batch's
//! net changes become one [`Op::Subscribe`] and one [`Op::Unsubscribe`]
//! per instance, so a burst of 100k first subscribers is a few hundred
//! SUBSCRIBE commands, not 100k round trips. A read request goes to its
//! instance after the changes that precede it.

use super::shard::Op;
use super::{shards, Broker, Receiver};
use ringcast_engine::upstream::Event;
use ringcast_engine::upstream::Recover;
use std::collections::HashMap;
use std::sync::Arc;

/// Events taken per batch.
const BATCH: usize = 8192;

/// Routes the workers' events until every worker has exited.
pub async fn route(broker: Arc<Broker>, mut events: Receiver) {
    let shard_count = broker.shards.len();
    // Workers holding each topic (each reports 0->1 and 1->0 only).
    let mut workers: HashMap<String, u32> = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH);
    while events.recv_many(&mut batch, BATCH).await > 0 {
        // Per shard: topics whose node-level state may have changed, in
        // first-seen order, and read requests, in order.
        let mut changed: Vec<Vec<(String, bool)>> = vec![Vec::new(); shard_count];
        let mut reads: Vec<Vec<Recover>> = (0..shard_count).map(|_| Vec::new()).collect();
        for event in batch.drain(..) {
            match event {
                Event::Interest(interest) => {
                    let (topic, held) = (interest.topic, interest.held);
                    let count = workers.entry(topic.clone()).or_insert(0);
                    let was = *count > 0;
                    *count = if held {
                        *count + 1
                    } else {
                        count.saturating_sub(1)
                    };
                    let now = *count > 0;
                    if !now {
                        workers.remove(&topic);
                    }
                    if was != now {
                        changed[shards::shard_of(&topic, shard_count)].push((topic, now));
                    }
                }
                Event::Recover(read) => {
                    reads[shards::shard_of(&read.topic, shard_count)].push(read);
                }
                other => tracing::error!(?other, "not a broker event"),
            }
        }
        for ((shard, changes), reads) in broker.shards.iter().zip(changed).zip(reads) {
            // A topic may flip twice in one batch: only its last state
            // counts, and only if it differs from the state before.
            let mut last: HashMap<&str, (bool, bool)> = HashMap::new();
            for (topic, now) in &changes {
                last.entry(topic)
                    .and_modify(|e| e.1 = *now)
                    .or_insert((!now, *now));
            }
            let (mut on, mut off) = (Vec::new(), Vec::new());
            for (topic, (before, after)) in last {
                if before != after {
                    if after {
                        on.push(topic.to_owned())
                    } else {
                        off.push(topic.to_owned())
                    }
                }
            }
            if !on.is_empty() {
                shard.send(Op::Subscribe(on));
            }
            if !off.is_empty() {
                shard.send(Op::Unsubscribe(off));
            }
            for read in reads {
                shard.send(Op::Recover(read));
            }
        }
    }
}
