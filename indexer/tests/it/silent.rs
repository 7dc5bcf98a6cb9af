//! The silent-payment (BIP352) index against real regtest nodes: the tweaks a bulk pass and a
//! follower store equal those computed from the node's own transactions (`getblock 3`), a reorg
//! takes them away with its blocks, and the setting is fixed when an index is created.

use anyhow::Result;
use serde_json::json;

use blkindex_testkit::chain::{build_rich_chain, ChainBuilder};
use blkindex_testkit::expect::expected_tweaks;
use blkindex_testkit::verify::{indexer_command, open_index, Indexer, PausePoint};
use blkindex_testkit::{Node, NodeOptions};

use crate::follow::{assert_matches_node, bin, following};

fn bulk(node: &Node, db: &std::path::Path, extra: &[&str]) -> std::process::Output {
    indexer_command(&bin(), node, db)
        .args(["--no-follow", "--progress", "none"])
        .args(extra)
        .output()
        .unwrap()
}

/// A taproot coin of the wallet spent (by key path, as the wallet signs) to a taproot output, in a
/// block of its own: the rich chain's wallet picks its coins itself and does not always take one.
fn spend_taproot_by_key_path(node: &Node) -> Result<()> {
    let b = ChainBuilder::new(node)?;
    let tr = node.new_address("bech32m")?;
    let txid = node.send(&tr, bitcoin::Amount::from_btc(1.0)?)?;
    b.mine(1)?;
    let coins = node.wallet_call("listunspent", json!([1, 9_999_999, [tr.to_string()]]))?;
    let coin = coins.as_array().and_then(|c| c.iter().find(|u| u["txid"] == json!(txid.to_string())));
    let vout =
        coin.and_then(|u| u["vout"].as_u64()).ok_or_else(|| anyhow::anyhow!("no coin at {tr}: {coins}"))?;
    let to = node.new_address("bech32m")?;
    let options = json!({"inputs": [{"txid": txid.to_string(), "vout": vout}], "add_inputs": false,
                         "change_address": node.new_address("bech32m")?.to_string()});
    node.wallet_call("send", json!([{to.to_string(): 0.5}, null, "unset", 10, options]))?;
    b.mine(1)?;
    Ok(())
}

#[test]
fn sp_bulk_tweaks_equal_the_nodes() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    spend_taproot_by_key_path(&node)?;
    let want = expected_tweaks(&node, 0)?;
    let eligible: usize = want.blocks.iter().map(|(_, t)| t.len()).sum();
    // The rich chain's wallet spends taproot (key path) and P2WPKH coins to taproot outputs.
    assert!(eligible >= 10 && want.p2tr_spends > 0 && want.p2wpkh_spends > 0, "{want:?}");
    let dir = tempfile::tempdir()?;

    // The tweak pass killed before its first write: the rest of the index is there, no tweak
    // is, and the tweaks are done below the first block with candidates; a second run resumes it.
    let db = dir.path().join("db");
    let out = indexer_command(&bin(), &node, &db)
        .args(["--no-follow", "--progress", "none"])
        .env("BLKINDEX_FAILPOINT", "tweaks:1")
        .output()?;
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let index = open_index(&node, &db);
    let tip = node.height()? as u32;
    assert_eq!(index.chain.tip().map(|t| t.0), Some(tip));
    assert!(index.tweaks(0..=tip)?.is_empty());
    let pending = index.tweaks_pending()?.expect("tweaks still to do");
    assert!(
        *pending.start() <= want.blocks[0].0 && *pending.end() >= want.blocks.last().unwrap().0,
        "{pending:?}"
    );
    drop(index);
    let out = bulk(&node, &db, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("silent-payment tweaks of"));
    let index = open_index(&node, &db);
    assert_eq!(index.tweaks_pending()?, None);
    assert_eq!(index.tweak_start()?, Some(0));
    assert_eq!(index.tweaks(0..=tip)?, want.blocks);
    // A sub-range, and one past the tip, are bounded as asked.
    let (h, _) = &want.blocks[want.blocks.len() / 2];
    assert_eq!(index.tweaks(*h..=*h)?, want.blocks.iter().filter(|b| b.0 == *h).cloned().collect::<Vec<_>>());
    assert!(index.tweaks(tip + 1..=tip + 100)?.is_empty());

    // Started later: no rows below the start.
    let from = want.blocks[want.blocks.len() / 2].0;
    let later = dir.path().join("later");
    let out = bulk(&node, &later, &["--sp-start", &from.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(open_index(&node, &later).tweaks(0..=tip)?, expected_tweaks(&node, from)?.blocks);

    // Off: no rows at all; and the setting cannot change on an existing index.
    let off = dir.path().join("off");
    let out = bulk(&node, &off, &["--no-sp-index"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let index = open_index(&node, &off);
    assert_eq!(index.tweak_start()?, None);
    assert!(index.tweaks(0..=tip)?.is_empty());
    let out = bulk(&node, &off, &["--sp-start", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("created with the silent-payment index off"), "{err}");
    // Without a flag an existing index keeps its setting.
    assert!(bulk(&node, &off, &[]).status.success());
    assert_eq!(open_index(&node, &off).tweak_start()?, None);
    Ok(())
}

/// A follower's tweaks through blocks and a reorg that takes an eligible transaction's block
/// away: they equal the node's, and a fresh bulk index's (the digest covers the family).
#[test]
fn sp_follow_and_reorg() -> Result<()> {
    let (node, dir, db, mut f): (Node, tempfile::TempDir, std::path::PathBuf, Indexer) = following(&[])?;
    let b = ChainBuilder::new(&node)?;
    let to = node.new_address("bech32m")?;
    node.send(&to, bitcoin::Amount::from_btc(0.5)?)?;
    let stale = b.mine(1)?[0];
    let h = node.height()? as u32;
    f.wait_synced(&node, &db)?;
    let want = expected_tweaks(&node, 0)?;
    assert!(want.blocks.iter().any(|(bh, _)| *bh == h), "the block at {h} holds an eligible transaction");
    assert_eq!(open_index(&node, &db).tweaks(0..=h)?, want.blocks);

    // The block goes; two empty blocks take its place: its tweaks must go with it.
    node.call("invalidateblock", json!([stale.to_string()]))?;
    let addr = node.new_address("bech32")?;
    for _ in 0..2 {
        node.call("generateblock", json!([addr.to_string(), []]))?;
    }
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    let index = open_index(&node, &db);
    assert!(index.tweaks(h..=h + 1)?.is_empty(), "the reorg left tweaks of the stale block");
    assert_eq!(index.tweaks(0..=h + 1)?, expected_tweaks(&node, 0)?.blocks);

    // The transaction, back from the mempool, is mined again above.
    b.mine(1)?;
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    let want = expected_tweaks(&node, 0)?;
    assert!(want.blocks.iter().any(|(bh, _)| *bh == h + 2));
    assert_eq!(open_index(&node, &db).tweaks(0..=h + 2)?, want.blocks);
    Ok(())
}

/// The tweak pass runs beside the follower. Held before its first write (a pause point, reached
/// once it has read and computed its batch), the follower follows a reorg that takes away a block
/// whose tweaks are still pending and puts an empty block in its place, then blocks with an
/// eligible transaction, whose tweaks are served at once; let go, the pass must leave the undone
/// block out (its row is not the one it read), and the index must equal a fresh one and the
/// node's tweaks.
#[test]
fn sp_tweak_pass_beside_the_follower_and_a_reorg_into_its_heights() -> Result<()> {
    let node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    spend_taproot_by_key_path(&node)?;
    let tip = node.height()? as u32;
    let want = expected_tweaks(&node, 0)?;
    assert!(want.blocks.iter().any(|(h, _)| *h == tip), "the tip's block has an eligible transaction");
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    let pause = PausePoint::new(dir.path(), "tweaks");
    let mut f = Indexer::follow_with_env(&bin(), &node, &db, &[], &[pause.env()])?;
    f.wait_synced(&node, &db)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    pause.wait_reached(std::time::Duration::from_secs(60))?;
    let held = open_index(&node, &db).tweaks_pending()?.expect("the pass is held");
    assert!(held.contains(&want.blocks[0].0) && held.contains(&tip), "{held:?}");

    let stale = node.best_hash()?;
    node.call("invalidateblock", json!([stale.to_string()]))?;
    let addr = node.new_address("bech32")?;
    for _ in 0..2 {
        node.call("generateblock", json!([addr.to_string(), []]))?;
    }
    // New blocks above, with eligible transactions: computed by the follower, served at once.
    spend_taproot_by_key_path(&node)?;
    let new_tip = node.height()? as u32;
    f.wait_synced(&node, &db)?;
    let index = open_index(&node, &db);
    let pending = index.tweaks_pending()?.expect("the pass is still held");
    assert!(
        pending.contains(&want.blocks[0].0) && *pending.end() < tip,
        "the undone row is gone: {pending:?}"
    );
    assert_eq!(index.tweaks_computed_to(*pending.start(), new_tip)?, None);
    let above = expected_tweaks(&node, tip)?.blocks;
    assert!(!above.is_empty() && above.iter().all(|(h, _)| *h > tip + 1), "{above:?}");
    assert_eq!(index.tweaks(tip..=new_tip)?, above, "the follower's tweaks, above the pending ones");
    drop(index);

    pause.release()?;
    while open_index(&node, &db).tweaks_pending()?.is_some() {
        assert!(
            std::time::Instant::now() < deadline + std::time::Duration::from_secs(60),
            "the pass did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    f.wait_logged("left out")?;
    let now = expected_tweaks(&node, 0)?;
    assert!(
        !now.blocks.iter().any(|(h, _)| *h == tip),
        "the empty block at {tip} has no eligible transaction"
    );
    assert_eq!(open_index(&node, &db).tweaks(0..=new_tip)?, now.blocks);
    assert_matches_node(&mut f, &node, &db, dir.path())?;
    assert!(f.stop()?.success());
    Ok(())
}
