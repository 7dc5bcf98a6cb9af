"""Starts ElectrumX with its TCP responses unpadded, for scripts/bench-query.sh.

ElectrumX >= 1.18 pads and buffers TCP responses against traffic analysis (PaddedRSTransport):
small replies wait up to a second to be coalesced. That measures the padding, not the server, so
the benchmark swaps in aiorpcx's plain transport before the server starts. Cost throttling is
switched off through the environment (COST_SOFT_LIMIT=0, COST_HARD_LIMIT=0).
"""
import sys

from aiorpcx.rawsocket import RSTransport
import electrumx.server.session as session

session.PaddedRSTransport = RSTransport

from electrumx.cli.electrumx_server import main  # noqa: E402

sys.exit(main())
