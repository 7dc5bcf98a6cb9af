//! JSON-RPC batches that succeed: `electrum-client`'s `batch_*` calls, each answer checked
//! against the node's chain, up to `--max-batch` requests in one batch.

use anyhow::Result;
use bitcoin::{Script, ScriptBuf};
use electrum_client::ElectrumApi;

use blkindex_testkit::expect::expected;

use crate::common::rich_setup;

#[test]
fn electrum_client_batches_answer_as_the_node() -> Result<()> {
    let (node, _dir, _indexer, server) = rich_setup()?;
    let want = expected(&node)?;
    let client = server.client();

    // A hundred scripts (the default --max-batch), in three batch calls.
    let mut scripts: Vec<_> =
        want.scripts.iter().map(|(sh, s)| (*sh, ScriptBuf::from_bytes(s.clone()))).collect();
    scripts.sort_by_key(|(sh, _)| *sh);
    scripts.truncate(100);
    assert_eq!(scripts.len(), 100, "the rich chain has fewer scripts than a full batch");
    let refs: Vec<&Script> = scripts.iter().map(|(_, s)| s.as_script()).collect();
    let histories = client.batch_script_get_history(refs.iter().copied())?;
    let balances = client.batch_script_get_balance(refs.iter().copied())?;
    let unspent = client.batch_script_list_unspent(refs.iter().copied())?;
    assert_eq!((histories.len(), balances.len(), unspent.len()), (100, 100, 100));
    for (i, (sh, _)) in scripts.iter().enumerate() {
        let got: Vec<_> = histories[i].iter().map(|h| (h.tx_hash, h.height as u32)).collect();
        assert_eq!(got, want.history[sh], "history of {sh}");
        let utxos = &want.utxos[sh];
        assert_eq!(balances[i].confirmed, utxos.values().map(|(v, _)| v).sum::<u64>(), "balance of {sh}");
        assert_eq!(balances[i].unconfirmed, 0);
        assert_eq!(unspent[i].len(), utxos.len(), "unspent outputs of {sh}");
    }

    // Transactions and their merkle proofs, and headers, by the batch.
    let txs: Vec<_> = want.txs.iter().take(100).collect();
    let txids: Vec<_> = txs.iter().map(|(txid, ..)| *txid).collect();
    let raws = client.batch_transaction_get_raw(txids.iter())?;
    for (raw, txid) in raws.iter().zip(&txids) {
        let tx: bitcoin::Transaction = bitcoin::consensus::deserialize(raw)?;
        assert_eq!(tx.compute_txid(), *txid);
    }
    let proofs = client
        .batch_transaction_get_merkle(txs.iter().map(|(txid, height, ..)| (*txid, *height as usize)))?;
    for (proof, (_, height, _, pos)) in proofs.iter().zip(&txs) {
        assert_eq!((proof.block_height, proof.pos), (*height as usize, *pos as usize));
    }
    let heights: Vec<u32> = (0..=node.height()? as u32).collect();
    let headers = client.batch_block_header_raw(heights.iter().copied())?;
    for (raw, h) in headers.iter().zip(&heights) {
        let header: bitcoin::block::Header = bitcoin::consensus::deserialize(raw)?;
        let hash = node.call("getblockhash", serde_json::json!([h]))?;
        assert_eq!(header.block_hash().to_string(), hash.as_str().unwrap(), "header {h}");
    }
    Ok(())
}
