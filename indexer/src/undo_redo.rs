//! Undo-then-redo equality, as a proptest over random transaction shapes mined on a real regtest
//! node: after the follower applies k new blocks, unwinding them (`unwind::unwind_blocks`, what a
//! reorg does) gives back exactly the index from before them, and applying them again gives
//! exactly a fresh bulk index of the chain. Indexes are compared with testkit's digest (headers,
//! tx positions, every (prefix, txnum) of the txid and script families).
//!
//! A unit test, not one of `tests/it/`: it drives the crate's private unwind and follower
//! directly, in process.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::{Amount, Network};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use blkindex_shared::blkfile::BlockFiles;
use blkindex_shared::schema::Height;
use blkindex_shared::store::{Mode, Store};
use blkindex_shared::Net;
use blkindex_testkit::chain::ChainBuilder;
use blkindex_testkit::verify::digest;
use blkindex_testkit::{Node, NodeOptions};

use crate::follow::{FollowSource, Follower};
use crate::rows::SpRows;
use crate::scan::BlockMap;
use crate::source::BlockSource;
use crate::unwind::unwind_blocks;

/// One wallet payment: to an address of this type (index into `KINDS`), of this many sats, and
/// whether it goes back to an address used before (address reuse puts txnums of several blocks in
/// one script's list).
type Payment = (usize, u64, bool);

const KINDS: [&str; 4] = ["legacy", "p2sh-segwit", "bech32", "bech32m"];

/// k blocks (1–4), each with 0–4 payments.
fn blocks() -> impl Strategy<Value = Vec<Vec<Payment>>> {
    prop::collection::vec(
        prop::collection::vec((0..KINDS.len(), 1_000u64..5_000_000, any::<bool>()), 0..5),
        1..5,
    )
}

/// A bulk index of the node's chain as it is now (the indexer's whole job, `--no-follow`).
fn bulk_index(node: &Node, db: &Path) {
    let args = crate::Args::from_args([
        "blkindex-indexer",
        "--network",
        "regtest",
        "--datadir",
        node.datadir.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--daemon-rpc-addr",
        &node.rpc_addr(),
        "--no-follow",
        "--progress",
        "none",
    ])
    .unwrap();
    crate::run(args, crate::Shutdown::Flag(Arc::new(AtomicBool::new(false)))).unwrap();
}

/// The follower brought to the node's tip once, as after a wake-up.
fn sync(source: &BlockSource) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    Follower::new(source, FollowSource::Files, Duration::from_millis(100), 100, stop).unwrap().sync().unwrap()
}

#[test]
fn unwinding_blocks_and_applying_them_again_gives_the_straight_index() {
    let node = Node::start(NodeOptions::default()).unwrap();
    let b = ChainBuilder::new(&node).unwrap();
    b.mine(110).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("followed");
    bulk_index(&node, &db);
    let files = BlockFiles::open(&node.blocks_dir()).unwrap();
    let net = Net(Network::Regtest);
    // The proptest closure is `Fn`: what it keeps between cases is in cells.
    let reused = RefCell::new(Vec::new());
    let case = Cell::new(0);
    // Few cases: each mines blocks and indexes the chain three times.
    let mut runner = TestRunner::new(Config { cases: 6, failure_persistence: None, ..Config::default() });
    runner
        .run(&blocks(), |shape| {
            case.set(case.get() + 1);
            let before = digest(&db);
            let tip = node.height().unwrap() as Height;
            for payments in &shape {
                for &(kind, sats, reuse) in payments {
                    let mut reused = reused.borrow_mut();
                    let to = match (reuse, reused.get(kind)) {
                        (true, Some(a)) => Clone::clone(a),
                        _ => node.new_address(KINDS[kind]).unwrap(),
                    };
                    node.send(&to, Amount::from_sat(sats)).unwrap();
                    if reused.len() < KINDS.len() {
                        reused.push(to);
                    }
                }
                b.mine(1).unwrap();
            }
            let k = shape.len() as Height;
            let straight_db = dir.path().join(format!("straight-{}", case.get()));
            bulk_index(&node, &straight_db);
            let straight = digest(&straight_db);

            let store = Store::open(&db, Mode::Follow).unwrap();
            let source = BlockSource {
                files: &files,
                store: &store,
                net,
                rpc: Some(node.rpc()),
                sp: SpRows { start: store.tweak_start().unwrap(), deferred: false },
            };
            prop_assert_eq!(sync(&source), k as usize);
            prop_assert_eq!(&digest(&db), &straight, "the followed index differs from a bulk one");
            // Undo the k blocks, top first, as a reorg does.
            let rows: Vec<_> = (tip + 1..=tip + k).map(|h| store.header_row(h).unwrap().unwrap()).collect();
            unwind_blocks(&source, &BlockMap::new(), &rows, tip + 1).unwrap();
            prop_assert_eq!(store.tip().unwrap().map(|t| t.0), Some(tip));
            prop_assert_eq!(&digest(&db), &before, "unwinding {} blocks left a different index", k);
            // Redo: a new follower (the chain reloaded from the store) applies them again.
            prop_assert_eq!(sync(&source), k as usize);
            prop_assert_eq!(&digest(&db), &straight, "redoing {} blocks gave a different index", k);
            Ok(())
        })
        .unwrap();
}
