//! Hot scripts' lists (longer than `--long-list-bytes`) live in the `long` family behind a marker
//! in their bucket. The length is made tiny here, so that the test chain's busy scripts go long
//! while their bucket neighbours stay inline; every query is checked against the node, and every
//! index against one with no long lists at all (the digest reads lists wherever they live).

use std::path::Path;

use anyhow::Result;

use blkindex_shared::schema::cf;
use blkindex_shared::store::{Mode, Store};
use blkindex_testkit::chain::{build_rich_chain, ChainBuilder};
use blkindex_testkit::expect::expected;
use blkindex_testkit::verify::{check, digest, indexer_command, open_index, Indexer};
use blkindex_testkit::{Node, NodeOptions};

use crate::follow::{assert_matches_node, bin};

fn index(node: &Node, db: &Path, extra: &[&str]) -> std::process::Output {
    indexer_command(&bin(), node, db)
        .args(["--no-follow", "--progress", "none"])
        .args(extra)
        .output()
        .unwrap()
}

/// (long script lists, inline script lists) of an index.
fn counts(db: &Path) -> (usize, usize) {
    let secondary = tempfile::tempdir().unwrap();
    let store = Store::open(db, Mode::Secondary(secondary.path().to_path_buf())).unwrap();
    let long = store.long_prefixes(cf::SCRIPT).unwrap().len();
    let width = store.bucket_width().unwrap();
    let mut inline = 0;
    for item in store.db().iterator_cf(store.cf(cf::SCRIPT), rocksdb::IteratorMode::Start) {
        let (_, v) = item.unwrap();
        let entries = blkindex_shared::bucket::entries(&v, 5 - width);
        inline += entries.filter(|e| !e.as_ref().unwrap().1.is_empty()).count();
    }
    (long, inline)
}

#[test]
fn long_lists_are_written_merged_followed_and_undone() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    // Six more scripts of eight coinbases each: lists of about 8 bytes, over the length below.
    for _ in 0..6 {
        node.mine(8, &node.new_address("bech32")?)?;
    }
    let dir = tempfile::tempdir()?;
    let long = ["--long-list-bytes", "6"];
    let (one, staged, inline) =
        (dir.path().join("one"), dir.path().join("staged"), dir.path().join("inline"));
    for (db, extra) in
        [(&one, &long[..]), (&staged, &[&long[..], &["--batch-kb", "1"]].concat()[..]), (&inline, &[])]
    {
        let out = index(&node, db, extra);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Lists went long both as a one-batch load wrote its buckets and as a staged load merged.
    let (long_one, inline_one) = counts(&one);
    assert!(long_one >= 5 && inline_one > long_one, "{long_one} long, {inline_one} inline lists");
    assert_eq!(counts(&staged), (long_one, inline_one));
    assert_eq!(counts(&inline).0, 0, "the default length leaves the test chain's lists inline");
    assert_eq!(digest(&one), digest(&inline), "long lists hold other txnums than inline ones");
    assert_eq!(digest(&staged), digest(&inline));
    check(&node, &open_index(&node, &one), &expected(&node)?)?;
    // The length is fixed when an index is created.
    let out = index(&node, &one, &["--long-list-bytes", "99"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("created with long lists over 6 bytes"), "{err}");

    // Following: blocks add to long lists, a new address's list crosses the length and moves,
    // and reorgs undo blocks that touched long lists.
    let mut f = Indexer::follow(&bin(), &node, &one, &[])?;
    let b = ChainBuilder::new(&node)?;
    b.wallet_traffic(2)?;
    node.mine(30, &node.new_address("bech32")?)?;
    b.reorg_with_conflict(3)?;
    b.wallet_traffic(1)?;
    assert_matches_node(&mut f, &node, &one, dir.path())?;
    let log = std::fs::read_to_string(&f.log)?;
    assert!(log.contains("a list moved to the long family"), "{log}");
    assert!(counts(&one).0 > long_one, "no list went long while following");
    Ok(())
}
