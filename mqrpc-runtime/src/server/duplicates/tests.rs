//! The table's bookkeeping: duplicates, cancels, displacement, and that
//! what it counts covers what it holds.

use super::*;

fn limits() -> Limits {
    Limits {
        max_entries: 3,
        max_bytes: 1 << 20,
        grace: Duration::from_secs(1),
        window: Duration::from_secs(60),
    }
}

fn key(n: u8) -> CallId {
    CallId::new(call_key("reply", &[n]), "add", None, b"args")
}

fn reply(bytes: usize) -> CachedReply {
    CachedReply {
        status: crate::Status::Ok,
        content_type: "application/postcard",
        payload: Bytes::from(vec![0; bytes]),
        held: bytes,
        metadata: crate::Metadata::new(),
    }
}

#[test]
fn duplicates_are_recognised_while_running_and_after() {
    let now = Instant::now();
    let mut table = CallTable::new(limits());
    assert!(matches!(table.admit(&key(1), now), Admission::Run));
    assert!(matches!(
        table.admit(&key(1), now),
        Admission::AlreadyRunning
    ));
    table.finish(&key(1), reply(3), now + Duration::from_secs(5));
    assert!(
        matches!(table.admit(&key(1), now), Admission::Answered(Some(r)) if r.payload.len() == 3)
    );
    // After its expiry the entry is gone.
    let later = now + Duration::from_secs(6);
    assert!(matches!(table.admit(&key(1), later), Admission::Run));
}

#[test]
fn the_table_is_bounded_by_entries_and_bytes() {
    let now = Instant::now();
    let mut table = CallTable::new(limits());
    for n in 0..10 {
        table.admit(&key(n), now);
        table.finish(&key(n), reply(1), now + Duration::from_secs(60));
    }
    assert_eq!(table.len(), 3, "only the newest max_entries are kept");
    let per_call = entry_cost(&key(0).key) + ENDED_COST + 20;
    let mut small = CallTable::new(Limits {
        max_entries: 100,
        max_bytes: BASE_COST + 16 * per_call,
        ..limits()
    });
    for n in 0..40 {
        small.admit(&key(n), now);
        small.finish(&key(n), reply(20), now + Duration::from_secs(60));
    }
    assert_eq!(small.bytes(), BASE_COST + 16 * per_call);
    assert_eq!(
        small.len(),
        16,
        "the byte budget holds 16 calls with replies of 20 bytes"
    );
}

#[test]
fn cancel_before_arrival_blocks_the_request() {
    let now = Instant::now();
    let mut table = CallTable::new(limits());
    assert!(!table.cancel(key(7).key, now));
    assert!(matches!(table.admit(&key(7), now), Admission::Cancelled));
}

#[test]
fn cancel_stops_a_running_call() {
    let now = Instant::now();
    let mut table = CallTable::new(limits());
    table.admit(&key(1), now);
    let (tx, mut rx) = oneshot::channel();
    assert!(table.set_stopper(&key(1), tx));
    assert!(table.cancel(key(1).key, now));
    assert!(rx.try_recv().is_ok());
}

#[test]
fn a_cancel_before_arrival_blocks_only_the_first_request_with_its_key() {
    let now = Instant::now();
    let mut table = CallTable::new(limits());
    let first = key(1);
    let other = CallId::new(first.key.clone(), "add", None, b"other");
    table.cancel(first.key.clone(), now);
    assert!(matches!(table.admit(&first, now), Admission::Cancelled));
    assert!(
        matches!(table.admit(&first, now), Admission::Cancelled),
        "its copies too"
    );
    assert!(matches!(table.admit(&other, now), Admission::Run));
}

#[test]
fn a_displaced_call_still_runs_after_its_displacer_is_forgotten() {
    let now = Instant::now();
    let mut table = CallTable::new(limits());
    let first = key(1);
    let second = CallId::new(first.key.clone(), "add", None, b"second");
    table.admit(&first, now);
    table.admit(&second, now);
    table.forget(&second); // e.g. answered at QoS 0
    let (tx, _rx) = oneshot::channel();
    assert!(table.set_stopper(&first, tx));
}

#[test]
fn a_reused_key_with_another_request_is_a_new_call() {
    let now = Instant::now();
    let expires = now + Duration::from_secs(5);
    let mut table = CallTable::new(limits());
    let first = key(1);
    let second = CallId::new(first.key.clone(), "add", None, b"other args");
    assert_ne!(first.digest, second.digest);
    assert!(matches!(table.admit(&first, now), Admission::Run));
    table.finish(&first, reply(3), expires);
    assert!(matches!(table.admit(&second, now), Admission::Run));
    assert_eq!(
        table.bytes(),
        BASE_COST + entry_cost(&first.key) + ENDED_COST,
        "the displaced reply is not kept"
    );
    assert!(matches!(
        table.admit(&second, now),
        Admission::AlreadyRunning
    ));
    table.finish(&second, reply(4), expires);
    assert!(
        matches!(table.admit(&second, now), Admission::Answered(Some(r)) if r.payload.len() == 4)
    );
    // While one call runs, another with its key displaces it; the first
    // one's end no longer touches the entry.
    let third = CallId::new(first.key.clone(), "add", None, b"third");
    let fourth = CallId::new(first.key.clone(), "add", None, b"fourth");
    let mut table = CallTable::new(limits());
    table.admit(&third, now);
    assert!(matches!(table.admit(&fourth, now), Admission::Run));
    let (tx, _rx) = oneshot::channel();
    assert!(
        table.set_stopper(&third, tx),
        "the displaced call still runs"
    );
    table.finish(&third, reply(7), expires);
    assert!(matches!(
        table.admit(&fourth, now),
        Admission::AlreadyRunning
    ));
    table.forget(&third);
    assert!(matches!(
        table.admit(&fourth, now),
        Admission::AlreadyRunning
    ));
}

/// What the table really holds: its map's buckets and control bytes, its
/// queue's capacity, the keys' and answers' allocations, and the
/// allocations stale places in the queue keep (the stop channels aside:
/// tokio's are not measurable from outside).
fn measured(table: &CallTable) -> usize {
    let capacity = table.entries.capacity();
    let buckets = match capacity {
        0 => 0,
        c if c < 8 => c + 1,
        c => c / 7 * 8,
    };
    let map = if buckets == 0 {
        0
    } else {
        buckets * (size_of::<(CallKey, Entry)>() + 1) + 16
    };
    let queue = table.ended.capacity() * size_of::<(Instant, Weak<KeyData>)>();
    let arc = 2 * size_of::<usize>() + size_of::<KeyData>();
    let keys: usize = table
        .entries
        .keys()
        .map(|k| arc + k.topic.len() + k.correlation.len())
        .sum();
    let replies: usize = table
        .entries
        .values()
        .map(|e| match e.reply_bytes() {
            0 => 0,
            held => held + 2 * size_of::<usize>() + size_of::<CachedReply>(),
        })
        .sum();
    let dead = table
        .ended
        .iter()
        .filter(|(_, k)| k.strong_count() == 0)
        .count()
        * arc;
    map + queue + keys + replies + dead
}

fn big_key(n: u32, topic: usize, correlation: usize) -> CallId {
    let mut data = vec![0u8; correlation.max(4)];
    data[..4].copy_from_slice(&n.to_be_bytes());
    CallId::new(
        call_key(&"t".repeat(topic), &data[..correlation.max(4)]),
        "add",
        None,
        b"args",
    )
}

#[test]
fn what_the_table_counts_covers_what_it_holds_and_stays_in_budget() {
    let now = Instant::now();
    let budget = 2 << 20;
    let mut table = CallTable::new(Limits {
        max_entries: 10_000,
        max_bytes: budget,
        ..limits()
    });
    let check = |table: &CallTable, what: &str| {
        assert!(
            measured(table) <= table.bytes(),
            "{what}: holds {} bytes, counts {}",
            measured(table),
            table.bytes()
        );
        assert!(table.bytes() <= budget, "{what}: {} bytes", table.bytes());
    };
    // Keys of every size, answers of every size, some displaced, some
    // forgotten, some cancelled.
    for n in 0..20_000u32 {
        let id = big_key(n, (n % 300) as usize, (n % 97) as usize);
        match table.admit(&id, now) {
            Admission::Run => {}
            Admission::Full => panic!("nothing runs for long here"),
            _ => continue,
        }
        match n % 5 {
            0 => table.forget(&id),
            1 => {
                let _ = table.cancel(id.key.clone(), now);
            }
            2 => {
                let other = CallId::new(id.key.clone(), "add", None, b"other");
                table.finish(&id, reply(n as usize % 700), now + Duration::from_secs(60));
                assert!(matches!(table.admit(&other, now), Admission::Run));
                table.forget(&other);
            }
            _ => table.finish(&id, reply(n as usize % 5000), now + Duration::from_secs(60)),
        }
        if n % 1000 == 0 {
            check(&table, &format!("after {n} calls"));
        }
    }
    check(&table, "full");
    assert!(table.len() < 20_000, "the budget forgot the oldest");
}

#[test]
fn the_window_gives_the_memory_back() {
    let now = Instant::now();
    let mut table = CallTable::new(Limits {
        max_entries: 10_000,
        max_bytes: 64 << 20,
        ..limits()
    });
    for n in 0..10_000u32 {
        let id = big_key(n, 200, 16);
        table.admit(&id, now);
        table.finish(&id, reply(100), now + Duration::from_secs(60));
    }
    assert_eq!(table.len(), 10_000);
    assert!(table.entries.capacity() >= 10_000);
    // One request after the window: every ended call expires, and the
    // map and the queue give their capacity back.
    let later = now + Duration::from_secs(61);
    assert!(matches!(table.admit(&key(1), later), Admission::Run));
    assert_eq!(table.len(), 1);
    assert!(table.entries.capacity() <= 4 * SPARE);
    assert!(table.ended.capacity() <= 4 * SPARE);
    assert_eq!(table.bytes(), BASE_COST + entry_cost(&key(1).key));
    table.forget(&key(1));
    assert_eq!(table.bytes(), BASE_COST);
}

#[test]
fn running_calls_that_take_the_whole_budget_leave_no_room() {
    let now = Instant::now();
    let cost = entry_cost(&key(0).key);
    let mut table = CallTable::new(Limits {
        max_entries: 100,
        max_bytes: BASE_COST + 3 * cost,
        ..limits()
    });
    for n in 0..3 {
        assert!(matches!(table.admit(&key(n), now), Admission::Run));
    }
    assert!(matches!(table.admit(&key(3), now), Admission::Full));
    // A cancel of an unknown call is not remembered either.
    assert!(!table.cancel(key(4).key, now));
    assert_eq!(table.len(), 3);
    // Once one ends (and is forgotten), there is room again.
    table.forget(&key(0));
    assert!(matches!(table.admit(&key(3), now), Admission::Run));
    // An ended call makes room for a running one.
    table.finish(&key(1), reply(1), now + Duration::from_secs(60));
    assert!(matches!(table.admit(&key(5), now), Admission::Run));
    assert!(table.bytes() <= BASE_COST + 3 * cost);
}
