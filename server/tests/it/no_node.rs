//! A server without a node (`--no-node`) over the index of a real regtest chain whose node is
//! stopped: every method of every version answers as a server with the node did (and the
//! scripts and transactions as the node said before it stopped), except those that need the
//! node, which answer one clear error; and a block indexed later (the node back, the indexer
//! following it, the server still without a node) is announced to subscribed clients.

use std::time::Duration;

use anyhow::{Context, Result};
use bitcoin::{Address, Amount, Network, Txid};
use serde_json::{json, Value};

use blkindex_server::protocol::{available, version_string, Version, DAEMON_ERROR, METHODS, VERSIONS};
use blkindex_shared::ScriptHash;
use blkindex_testkit::chain::{build_rich_chain, ChainBuilder};
use blkindex_testkit::expect::{expected, Expected};
use blkindex_testkit::{Node, NodeOptions};

use crate::common::{indexed, req, session, status_of, Conn, Server};

/// A silent-payment wallet's keys: a scan private key (0x11…) and a spend public key (G).
const SP_SCAN: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const SP_SPEND: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";

/// What a `--no-node` server answers to the calls that need the node.
const NO_NODE: &str = "no node: the server runs with --no-node";

/// The methods whose answer needs the node: a call to it, or its mempool as the whole answer.
fn needs_node(method: &str) -> bool {
    method.ends_with(".get_mempool")
        || method.starts_with("mempool.")
        || matches!(
            method,
            "blockchain.transaction.broadcast"
                | "blockchain.transaction.broadcast_package"
                | "blockchain.transaction.testmempoolaccept"
                | "blockchain.estimatefee"
                | "blockchain.relayfee"
        )
}

/// What the requests name: scripts (with addresses, and one never used), transactions and
/// outpoints of the chain.
struct Names {
    tip: u64,
    scripts: Vec<(ScriptHash, Address)>,
    /// (txid, height, position, raw hex as the node gave it).
    txs: Vec<(Txid, u32, u32, String)>,
    spent: (Txid, u32),
    unspent: (Txid, u32),
}

/// The requests of `method` at version `v` (after `server.version`, which each session sends
/// first). Every method of the table needs an arm.
fn requests(n: &Names, method: &str, v: Version) -> Vec<Value> {
    let tip = n.tip;
    let script_arg = |family: &str, (sh, address): &(ScriptHash, Address)| match family {
        "blockchain.address" => json!(address.to_string()),
        "blockchain.scripthash" => json!(sh.to_string()),
        "blockchain.scriptpubkey" => json!(hex::encode(address.script_pubkey().as_bytes())),
        other => panic!("no script family {other}"),
    };
    let (raw_tx, unknown) = (&n.txs[1].3, "ab".repeat(32));
    let outpoints = [n.spent, n.unspent, (n.spent.0, 999)];
    match method {
        "server.banner" | "server.donation_address" | "server.peers.subscribe" | "server.features" => {
            vec![json!([])]
        }
        "server.add_peer" => vec![json!([{"hosts": {"127.0.0.2": {"tcp_port": 50001}}}])],
        "server.ping" if v >= (1, 7, 0) => vec![json!([3, "ab"])],
        "server.ping" | "blockchain.numblocks.subscribe" | "blockchain.headers.subscribe" => vec![json!([])],
        "blockchain.block.get_header" => vec![json!([0]), json!([7]), json!([tip]), json!([tip + 1])],
        "blockchain.block.get_chunk" => vec![json!([0])],
        "blockchain.block.header" if v >= (1, 4, 0) => {
            vec![json!([0]), json!([tip]), json!([9, tip]), json!([tip, tip]), json!([tip + 1])]
        }
        "blockchain.block.header" => vec![json!([0]), json!([tip])],
        "blockchain.block.headers" if v >= (1, 4, 0) => vec![json!([tip - 5, 10]), json!([3, 4, tip - 1])],
        "blockchain.block.headers" => vec![json!([tip - 5, 10])],
        m if m.starts_with("blockchain.address.")
            || m.starts_with("blockchain.scripthash.")
            || m.starts_with("blockchain.scriptpubkey.") =>
        {
            let family = m.rsplit_once('.').unwrap().0;
            n.scripts.iter().map(|s| json!([script_arg(family, s)])).collect()
        }
        "blockchain.utxo.get_address" => outpoints.iter().map(|(t, o)| json!([t.to_string(), o])).collect(),
        "blockchain.outpoint.subscribe"
        | "blockchain.outpoint.unsubscribe"
        | "blockchain.outpoint.get_status" => {
            outpoints.iter().map(|(t, o)| json!([t.to_string(), o])).collect()
        }
        "blockchain.transaction.get" => {
            let mut out = vec![];
            for (txid, height, ..) in &n.txs {
                out.push(match v {
                    (1, 0, 0) => json!([txid.to_string(), height]),
                    (1, 1, 0) => json!([txid.to_string()]),
                    _ => json!([txid.to_string(), false]),
                });
                if v >= (1, 2, 0) {
                    out.push(json!([txid.to_string(), true]));
                }
            }
            out.push(json!([unknown]));
            out
        }
        "blockchain.transaction.get_merkle" => {
            let mut out: Vec<Value> = n.txs.iter().map(|(t, h, ..)| json!([t.to_string(), h])).collect();
            out.push(json!([n.txs[0].0.to_string(), n.txs[0].1 + 1]));
            out
        }
        "blockchain.transaction.id_from_pos" => {
            let mut out: Vec<Value> = n.txs.iter().map(|(_, h, p, _)| json!([h, p])).collect();
            out.extend(n.txs.iter().map(|(_, h, p, _)| json!([h, p, true])));
            out.push(json!([n.txs[0].1, 9999]));
            out
        }
        "blockchain.transaction.broadcast" => vec![json!([raw_tx])],
        "blockchain.transaction.broadcast_package" => vec![json!([[raw_tx], v >= (1, 7, 0)])],
        "blockchain.transaction.testmempoolaccept" => vec![json!([[raw_tx]])],
        "blockchain.estimatefee" => vec![json!([2])],
        "blockchain.relayfee" | "mempool.get_fee_histogram" | "mempool.get_info" | "mempool.recent" => {
            vec![json!([])]
        }
        // A subscribe that would start a scan sends notifications among the replies read here in
        // order: this one is refused before any (its range ends past the tip); the
        // silent-payments test covers the scan.
        "blockchain.silentpayments.subscribe" => vec![json!([SP_SCAN, SP_SPEND, "0-99999999"])],
        "blockchain.silentpayments.unsubscribe" => vec![json!([SP_SCAN, SP_SPEND])],
        "blockchain.silentpayments.tweaks" => vec![json!([0, 1000]), json!([0, 1])],
        other => panic!("no requests for {other}: add some"),
    }
}

/// Every version's session: `server.version`, then each of its methods' requests; the replies
/// in order, each with its method.
fn ask_everything(addr: &str, n: &Names) -> Vec<(Version, String, Value)> {
    let mut out = vec![];
    for &v in VERSIONS {
        let mut asked = vec![("server.version".to_string(), json!(["no-node", version_string(v)]))];
        for (m, ..) in METHODS.iter().filter(|(m, ..)| available(m, v) && *m != "server.version") {
            asked.extend(requests(n, m, v).into_iter().map(|p| (m.to_string(), p)));
        }
        let lines: Vec<Value> =
            asked.iter().enumerate().map(|(i, (m, p))| req(i as u32, m, p.clone())).collect();
        let replies = session(addr, &lines);
        assert_eq!(replies.len(), lines.len(), "every request of {} answered", version_string(v));
        out.extend(asked.into_iter().zip(replies).map(|((m, _), r)| (v, m, r)));
    }
    out
}

/// The script's answers (by script hash, protocol 1.4) against what the node said.
fn check_scripts(addr: &str, want: &Expected) {
    let mut scripts: Vec<&ScriptHash> = want.history.keys().collect();
    scripts.sort();
    for chunk in scripts.chunks(100) {
        let mut lines = vec![req(0, "server.version", json!(["no-node", "1.4"]))];
        for (i, sh) in chunk.iter().enumerate() {
            let arg = json!([sh.to_string()]);
            let id = 1 + 3 * i as u32;
            lines.push(req(id, "blockchain.scripthash.get_history", arg.clone()));
            lines.push(req(id + 1, "blockchain.scripthash.listunspent", arg.clone()));
            lines.push(req(id + 2, "blockchain.scripthash.get_balance", arg));
        }
        let replies = session(addr, &lines);
        assert_eq!(replies.len(), lines.len());
        for (i, sh) in chunk.iter().enumerate() {
            let [history, unspent, balance] = [1, 2, 3].map(|k| &replies[3 * i + k]["result"]);
            let history_want: Vec<Value> = want.history[*sh]
                .iter()
                .map(|(t, h)| json!({"tx_hash": t.to_string(), "height": h}))
                .collect();
            assert_eq!(history, &json!(history_want), "history of {sh}");
            let utxos = want.utxos.get(*sh).cloned().unwrap_or_default();
            let mut unspent_want: Vec<Value> = utxos
                .iter()
                .map(|(op, (value, h))| {
                    json!({"tx_hash": op.txid.to_string(), "tx_pos": op.vout, "height": h, "value": value})
                })
                .collect();
            let mut got = unspent.as_array().unwrap_or_else(|| panic!("unspent of {sh}: {unspent}")).clone();
            got.sort_by_key(|u| u.to_string());
            unspent_want.sort_by_key(|u| u.to_string());
            assert_eq!(got, unspent_want, "unspent outputs of {sh}");
            let confirmed: u64 = utxos.values().map(|(v, _)| v).sum();
            assert_eq!(balance, &json!({"confirmed": confirmed, "unconfirmed": 0}), "balance of {sh}");
        }
    }
}

#[test]
fn without_a_node_confirmed_data_is_served_as_with_it_and_new_blocks_are_announced() -> Result<()> {
    let mut node = Node::start(NodeOptions::default())?;
    build_rich_chain(&node)?;
    ChainBuilder::new(&node)?.mine(1)?;
    let pool = node.call("getrawmempool", json!([]))?;
    assert_eq!(pool, json!([]), "the mempool is empty: both servers see the same");
    let want = expected(&node)?;
    let tip = node.height()?;

    // The scripts with the longest histories that have an address, and one never used.
    let mut with_address: Vec<(ScriptHash, Address, usize)> = want
        .history
        .iter()
        .filter_map(|(sh, h)| {
            let script = bitcoin::Script::from_bytes(&want.scripts[sh]);
            Some((*sh, Address::from_script(script, Network::Regtest).ok()?, h.len()))
        })
        .collect();
    with_address.sort_by_key(|(sh, _, n)| (usize::MAX - n, *sh));
    let unused = node.new_address("bech32")?;
    let mut scripts: Vec<(ScriptHash, Address)> =
        with_address.into_iter().take(3).map(|(sh, a, _)| (sh, a)).collect();
    scripts.push((ScriptHash::of(unused.script_pubkey().as_bytes()), unused.clone()));
    let txs = want
        .txs
        .iter()
        .step_by(97)
        .chain(want.txs.last())
        .map(|(t, h, block, p)| {
            let raw = node.call("getrawtransaction", json!([t.to_string(), false, block.to_string()]))?;
            Ok((*t, *h, *p, raw.as_str().context("raw hex")?.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let (spent, _) = want.spenders.iter().min_by_key(|(op, _)| **op).context("a spent output")?;
    let (unspent, _) = want.utxos[&scripts[0].0].iter().next().context("an unspent output")?;
    let names =
        Names { tip, scripts, txs, spent: (spent.txid, spent.vout), unspent: (unspent.txid, unspent.vout) };

    let (dir, _indexer) = indexed(&node)?;
    let db = dir.path().join("db");
    let mut with_node = Server::start(&node, &db)?;
    let with = ask_everything(&with_node.addr, &names);
    let with_port = with_node.addr.rsplit(':').next().unwrap().parse::<u16>()?;
    with_node.terminate()?;

    // The node stops (the indexer stays, waiting for it); a server starts without one.
    node.stop()?;
    let server = Server::start_no_node(&node, &db, &["--log-stats-secs", "1"])?;
    let port = server.addr.rsplit(':').next().unwrap().parse::<u16>()?;
    let without = ask_everything(&server.addr, &names);
    assert_eq!(with.len(), without.len());
    let mut compared = 0;
    for ((v, method, a), (_, _, b)) in with.iter().zip(&without) {
        let what = format!("{method} at {}: {a} / {b}", version_string(*v));
        if needs_node(method) {
            assert_eq!(b["error"], json!({"code": DAEMON_ERROR, "message": NO_NODE}), "{what}");
            continue;
        }
        match method.as_str() {
            // Each names the port it listens on.
            "server.features" => {
                let (mut a, mut b) = (a.clone(), b.clone());
                let hosts = |r: &mut Value| r["result"].as_object_mut().unwrap().remove("hosts").unwrap();
                assert_eq!(hosts(&mut a), json!({"127.0.0.1": {"tcp_port": with_port}}), "{what}");
                assert_eq!(hosts(&mut b), json!({"127.0.0.1": {"tcp_port": port}}), "{what}");
                assert_eq!(a, b, "{what}");
            }
            _ => assert_eq!(a, b, "{what}"),
        }
        compared += 1;
    }
    eprintln!("{compared} answers the same without the node, {} refused", with.len() - compared);
    // And they are the node's: every script of the chain.
    check_scripts(&server.addr, &want);

    let log = server.log();
    assert!(log.contains("running without a node (--no-node)"), "{log}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.log().contains(r#"node="none""#) {
        assert!(std::time::Instant::now() < deadline, "no status line naming the node: {}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    for asked in ["reading the node's mempool", "cannot reach bitcoind", "ZMQ"] {
        assert!(!log.contains(asked), "no node was asked: {log}");
    }

    // Subscribed to new tips and to the unused script; the node comes back, pays the script
    // and mines it: the indexer follows, the server (still without a node) announces both.
    let mut c = Conn::open(&server.addr);
    c.result("server.version", json!(["no-node", "1.4"]));
    assert_eq!(c.result("blockchain.headers.subscribe", json!([]))["height"], json!(tip));
    let sh = names.scripts.last().unwrap().0;
    assert_eq!(c.result("blockchain.scripthash.subscribe", json!([sh.to_string()])), Value::Null);
    node.restart()?;
    node.ensure_wallet()?;
    let paid = node.send(&unused, Amount::from_btc(0.25)?)?;
    // No mempool here: the payment is not announced while unconfirmed.
    assert!(!c.wait_until(Duration::from_secs(1), |n| !n.is_empty()), "{:?}", c.notifications);
    ChainBuilder::new(&node)?.mine(1)?;
    let status = status_of(&[(paid, tip as i64 + 1)]);
    let announced = c.wait_until(Duration::from_secs(90), |n| {
        let header = n.iter().any(|m| {
            m["method"] == "blockchain.headers.subscribe" && m["params"][0]["height"] == json!(tip + 1)
        });
        let script = n.iter().any(|m| {
            m["method"] == "blockchain.scripthash.subscribe" && m["params"] == json!([sh.to_string(), status])
        });
        header && script
    });
    assert!(announced, "the block and the payment announced: {:?}", c.notifications);
    assert_eq!(
        c.result("blockchain.scripthash.get_history", json!([sh.to_string()])),
        json!([{"tx_hash": paid.to_string(), "height": tip + 1}])
    );
    assert!(!server.log().contains("ERROR"), "{}", server.log());

    // The node's flags given with --no-node: said to be ignored, and not used.
    let rpc = node.rpc_addr();
    let flagged = Server::start_no_node(&node, &db, &["--daemon-rpc-addr", rpc.as_str()])?;
    let log = flagged.log();
    assert!(log.contains("--no-node: ignoring --daemon-rpc-addr (no node is asked)"), "{log}");
    assert!(!log.contains("reading the node's mempool"), "{log}");
    Ok(())
}
