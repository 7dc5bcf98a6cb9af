//! `server.*`: version negotiation, features, banner, peers, ping.

use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::protocol::{software, VERSIONS};

/// `server.add_peer(features)`: whether the announced server is taken for verification.
pub fn add_peer(state: &Arc<State>, s: &mut Session, features: Option<&Value>) -> Value {
    // Counted before anything else: the limit is per session, whatever the answer.
    s.add_peer_calls += 1;
    let taken = s.peer_addr.is_some_and(|c| state.peers().add_peer(features, c.ip(), s.add_peer_calls));
    json!(taken)
}

/// `server.features` as version `v` shows it (also what we announce to peers); `silent`: the
/// index has silent-payment tweaks, so the silent-payments methods are served.
pub fn features(
    genesis_hash: &str,
    hosts: &serde_json::Map<String, Value>,
    v: Version,
    silent: bool,
) -> Value {
    let mut f = json!({
        "genesis_hash": genesis_hash,
        "hosts": hosts,
        "protocol_min": version_string(PROTOCOL_MIN),
        "protocol_max": version_string(PROTOCOL_MAX),
        "server_version": software(),
        "pruning": null,
    });
    if v < (1, 7, 0) {
        f["hash_function"] = json!("sha256");
    }
    if silent {
        // Frigate's proposal: the BIP352 versions served.
        f["silent_payments"] = json!([0]);
    }
    f
}

/// `server.version`: the highest version both speak wins; none in common ends the session.
pub fn version(s: &mut Session, client_name: Option<String>, min: Version, max: Version) -> Reply {
    if s.version.is_some() {
        return Err(ServerError::bad_request("server.version already sent"));
    }
    let Some(&chosen) = VERSIONS.iter().rev().find(|v| min <= **v && **v <= max) else {
        s.close = Some("no common protocol version");
        return Err(ServerError::BadRequest(format!(
            "unsupported protocol version: this server speaks {} to {}",
            version_string(PROTOCOL_MIN),
            version_string(PROTOCOL_MAX)
        )));
    };
    s.version = Some(chosen);
    if let Some(name) = client_name {
        let end = (0..=name.len().min(MAX_CLIENT_NAME)).rev().find(|i| name.is_char_boundary(*i));
        s.client = Some(name[..end.unwrap_or(0)].to_string());
    }
    // 1.0 answered with the server's version alone.
    Ok(match chosen {
        (1, 0, 0) => json!(software()),
        _ => json!([software(), version_string(chosen)]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `server.version` with `params`, as a session would call it.
    fn server_version(s: &mut Session, params: &Value) -> Reply {
        match Call::parse(
            "server.version",
            params,
            s.version(),
            blkindex_shared::Net(bitcoin::Network::Regtest),
        )? {
            Call::ServerVersion { client_name, min, max } => version(s, client_name, min, max),
            other => panic!("server.version parsed as {other:?}"),
        }
    }

    #[test]
    fn negotiation_picks_the_highest_common_version_or_closes() {
        let nego = |p: Value| {
            let mut s = Session::default();
            let r = server_version(&mut s, &p);
            let version = r.ok().map(|v| match v {
                Value::Array(a) => a[1].as_str().unwrap().to_string(),
                other => format!("bare {}", other.as_str().unwrap().split(' ').next().unwrap()),
            });
            (version, s.close.is_some())
        };
        assert_eq!(nego(json!(["c", ["1.1", "1.9"]])), (Some("1.7".into()), false));
        assert_eq!(nego(json!(["c", ["1.4", "1.6"]])), (Some("1.6".into()), false));
        assert_eq!(nego(json!(["c", ["1.4", "1.4.2"], "trailing", 9999.9])), (Some("1.4.2".into()), false));
        assert_eq!(nego(json!(["c", "1.4"])), (Some("1.4".into()), false));
        assert_eq!(nego(json!(["c"])), (Some("1.4".into()), false));
        assert_eq!(
            nego(json!({"client_name": "c", "protocol_version": "1.4.1"})),
            (Some("1.4.1".into()), false)
        );
        assert_eq!(nego(json!(["c", "1.2"])), (Some("1.2".into()), false));
        assert_eq!(nego(json!(["c", "1.0"])), (Some("bare blkindex".into()), false));
        // 1.5 was never defined: a range ending there gets the version before it.
        assert_eq!(nego(json!(["c", ["1.4", "1.5"]])), (Some("1.4.2".into()), false));
        assert_eq!(nego(json!(["c", "1.5"])), (None, true));
        assert_eq!(nego(json!(["c", ["1.8", "1.9"]])), (None, true));
        assert_eq!(nego(json!(["c", "0.9"])), (None, true));
        let mut s = Session::default();
        server_version(&mut s, &json!(["c", "1.4"])).unwrap();
        assert!(server_version(&mut s, &json!(["c", "1.4"])).is_err());
    }

    #[test]
    fn the_client_name_is_kept_cut_at_a_character_boundary() {
        let name = |p: Value| {
            let mut s = Session::default();
            server_version(&mut s, &p).ok().and(s.client)
        };
        assert_eq!(name(json!(["Electrum 4.5.8", "1.4"])).as_deref(), Some("Electrum 4.5.8"));
        // 'é' is two bytes: 64 bytes hold 32 of them; 'x' first shifts the cut to mid-character.
        assert_eq!(name(json!(["é".repeat(40), "1.4"])), Some("é".repeat(32)));
        assert_eq!(
            name(json!([format!("x{}", "é".repeat(40)), "1.4"])),
            Some(format!("x{}", "é".repeat(31)))
        );
        assert_eq!(name(json!({"client_name": "named"})).as_deref(), Some("named"));
        assert_eq!(name(json!([])), None);
        assert_eq!(name(json!(["no common version", "0.9"])), None);
    }
}
