//! Bytes per presence member in the node's registry (no broker).
//!
//! The registry (`engine/src/hub/presence.rs`) is crate-private, so this
//! bench compiles that very source file into itself (`#[path]`) with a
//! stand-in for the one crate item it uses (`Pattern`), and counts the
//! heap under a counting global allocator while it calls the registry's
//! API (`join`) as the workers do. Only the registry is counted: the
//! subscription (topic tables, connection slots) is not allocated here,
//! so every byte is "beyond the subscription".
//!
//! Three figures per case, each the growth of live heap over N joins,
//! divided by N:
//! - `requested`: bytes the registry asked for (`Layout::size`);
//! - `mimalloc`: the same requests rounded up to mimalloc's size classes
//!   (the server binary's allocator; no per-block header);
//! - `glibc`: `malloc_usable_size + 8` per block (the system allocator
//!   this bench actually runs on).
//!
//! Run: `cargo bench -p ringcast-engine --bench presence_memory`
//! (or see bench/results/presence/README.md for a rustc one-liner).
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Instant;

mod session {
    pub mod permissions {
        /// Stand-in for `crate::session::permissions::Pattern` (same
        /// matching rule: an exact name, or a prefix ending in `*`).
        #[derive(Clone, Debug)]
        pub struct Pattern(pub Box<str>);
        impl Pattern {
            pub fn parse(text: &str) -> Option<Self> {
                Some(Self(text.into()))
            }
            pub fn matches(&self, topic: &str) -> bool {
                match self.0.strip_suffix('*') {
                    Some(prefix) => topic.starts_with(prefix),
                    None => *topic == *self.0,
                }
            }
        }
    }
}

#[path = "../src/hub/presence.rs"]
mod presence;

use presence::{Key, Presence};
use session::permissions::Pattern;

extern "C" {
    fn malloc_usable_size(ptr: *mut u8) -> usize;
}

static REQUESTED: AtomicIsize = AtomicIsize::new(0);
static MIMALLOC: AtomicIsize = AtomicIsize::new(0);
static GLIBC: AtomicIsize = AtomicIsize::new(0);

/// mimalloc's small size classes: 8-byte steps to 64, then four classes
/// per doubling.
fn mi_class(size: usize) -> usize {
    let size = size.max(1);
    if size <= 64 {
        return size.div_ceil(8) * 8;
    }
    let b = usize::BITS - 1 - (size - 1).leading_zeros(); // 2^b < size <= 2^(b+1)
    let step = (1usize << b) / 4;
    size.div_ceil(step) * step
}

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            add(p, layout.size(), 1);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        add(p, layout.size(), -1);
        System.dealloc(p, layout);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        add(p, layout.size(), -1);
        let q = System.realloc(p, layout, new);
        if q.is_null() {
            add(p, layout.size(), 1);
        } else {
            add(q, new, 1);
        }
        q
    }
}

unsafe fn add(p: *mut u8, size: usize, sign: isize) {
    REQUESTED.fetch_add(sign * size as isize, Relaxed);
    MIMALLOC.fetch_add(sign * mi_class(size) as isize, Relaxed);
    GLIBC.fetch_add(sign * (malloc_usable_size(p) + 8) as isize, Relaxed);
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> [isize; 3] {
    [
        REQUESTED.load(Relaxed),
        MIMALLOC.load(Relaxed),
        GLIBC.load(Relaxed),
    ]
}

struct Case {
    name: &'static str,
    /// Topic of connection `i`.
    topic: fn(usize) -> String,
    /// User of connection `i`.
    user: fn(usize) -> Option<String>,
    info: bool,
}

fn run(case: &Case, n: usize) {
    let p = Presence::new(vec![Pattern::parse("room.*").unwrap()], 1000);
    // Inputs built before counting: they stand for the session's user
    // and info, which exist without presence.
    let inputs: Vec<(String, Option<String>, Option<String>)> = (0..n)
        .map(|i| {
            let user = (case.user)(i);
            let info = case
                .info
                .then(|| format!(r#"{{"name":"user-{}"}}"#, user.as_deref().unwrap_or("anon")));
            ((case.topic)(i), user, info)
        })
        .collect();
    let before = live();
    let t = Instant::now();
    for (i, (topic, user, info)) in inputs.iter().enumerate() {
        let key = Key {
            worker: (i % 2) as u32,
            slot: (i / 2) as u32,
        };
        let change = p.join(topic, key, user.as_deref(), info.as_deref());
        std::hint::black_box(change);
    }
    let join_ns = t.elapsed().as_nanos() as f64 / n as f64;
    let after = live();
    let per = |k: usize| (after[k] - before[k]) as f64 / n as f64;
    let stats = p.stats(&inputs[0].0);
    println!(
        "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {}/{} |",
        case.name,
        n,
        per(0),
        per(1),
        per(2),
        join_ns,
        stats.clients,
        stats.users
    );
    if stats.clients == n && n >= 10_000 && case.info {
        page_through(&p, &inputs[0].0, n);
    }
    // Leaving everyone must give the heap back (no leak in the registry).
    for (i, (topic, _, _)) in inputs.iter().enumerate() {
        let key = Key {
            worker: (i % 2) as u32,
            slot: (i / 2) as u32,
        };
        std::hint::black_box(p.leave(topic, key));
    }
    let left = live();
    let residue = left[0] - before[0];
    if residue > 4096 {
        println!(
            "<!-- {}: {} bytes still held after every leave -->",
            case.name, residue
        );
    }
}

/// Time to page through every member of `topic`, 1000 a page (what
/// `GET /presence` does per page, without the HTTP and JSON), and the
/// first page alone (the v1 `presence` op's list).
fn page_through(p: &Presence, topic: &str, n: usize) {
    let t = Instant::now();
    let first = p.page(topic, None, presence::MAX_ANSWER);
    let first_us = t.elapsed().as_secs_f64() * 1e6;
    let t = Instant::now();
    let (mut cursor, mut pages, mut listed) = (None, 0, 0);
    loop {
        let page = p.page(topic, cursor, 1000);
        pages += 1;
        listed += page.members.len();
        match page.next {
            Some(next) => cursor = Some(next.parse().unwrap()),
            None => break,
        }
    }
    let all_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(listed, n);
    assert_eq!(first.members.len(), presence::MAX_ANSWER);
    println!(
        "<!-- page-through N={n}: first page {first_us:.0} us; {pages} pages of 1000 in {all_ms:.1} ms -->"
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100_000]
    } else {
        sizes
    };
    let own = |i: usize| format!("room.{i}");
    let one = |_: usize| "room.1".to_string();
    let cases = [
        Case {
            name: "own topic each, anonymous, no info",
            topic: own,
            user: |_| None,
            info: false,
        },
        Case {
            name: "own topic each, distinct users, info",
            topic: own,
            user: |i| Some(format!("{i}")),
            info: true,
        },
        Case {
            name: "one topic, anonymous, no info",
            topic: one,
            user: |_| None,
            info: false,
        },
        Case {
            name: "one topic, distinct users, no info",
            topic: one,
            user: |i| Some(format!("{i}")),
            info: false,
        },
        Case {
            name: "one topic, distinct users, info",
            topic: one,
            user: |i| Some(format!("{i}")),
            info: true,
        },
        Case {
            name: "one topic, 10 conns/user, no info",
            topic: one,
            user: |i| Some(format!("{}", i / 10)),
            info: false,
        },
        Case {
            name: "one topic, 10 conns/user, info",
            topic: one,
            user: |i| Some(format!("{}", i / 10)),
            info: true,
        },
    ];
    println!("| case | N | requested B/member | mimalloc B/member | glibc B/member | ns/join | stats clients/users |");
    println!("|---|---|---|---|---|---|---|");
    for &n in &sizes {
        for case in &cases {
            run(case, n);
        }
    }
}
