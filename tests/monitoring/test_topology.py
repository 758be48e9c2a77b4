"""TopologyModel: precedence measured > configured > modelled > default; the distance model;
links() listing with sources; structural conformance to placement's Network protocol."""

import pytest

from continuum.model import Link, Location, Topology
from monitoring.topology import (
    LAN_BANDWIDTH_BPS,
    LOCAL_RTT_MS,
    UNKNOWN_BANDWIDTH_BPS,
    UNKNOWN_RTT_MS,
    WAN_BANDWIDTH_BPS,
    ZONE_BANDWIDTH_BPS,
    ZONE_RTT_MS,
    TopologyModel,
    haversine_km,
)

LOCATIONS = [
    Location(name="munich", lat=48.137, lon=11.575, zone="de"),
    Location(name="frankfurt", lat=50.110, lon=8.682, zone="de"),
    Location(name="garching", lat=48.249, lon=11.651, zone="de"),
    Location(name="virginia", lat=38.95, lon=-77.45, zone="us-east"),
    Location(name="lab", zone="de"),
]


def model(links=()):
    return TopologyModel(Topology(locations=LOCATIONS, links=list(links)))


def test_haversine_munich_frankfurt():
    assert haversine_km(48.137, 11.575, 50.110, 8.682) == pytest.approx(304, abs=5)


@pytest.mark.parametrize(
    ("a", "b", "lo_ms", "hi_ms"),
    [
        ("munich", "frankfurt", 3.0, 10.0),    # ~300 km: a few ms
        ("munich", "garching", 1.0, 3.0),      # ~13 km: dominated by the fixed overhead
        ("frankfurt", "virginia", 70.0, 130.0),  # transatlantic, ~6500 km
    ],
)
def test_modelled_rtt_reasonable(a, b, lo_ms, hi_ms):
    m = model()
    assert lo_ms <= m.rtt_ms(a, b) <= hi_ms
    assert m.rtt_ms(a, b) == m.rtt_ms(b, a)
    assert m.source(a, b) == "modelled"


@pytest.mark.parametrize(
    ("a", "b", "rtt", "bw"),
    [
        ("munich", "munich", LOCAL_RTT_MS, LAN_BANDWIDTH_BPS),
        ("munich", "lab", ZONE_RTT_MS, ZONE_BANDWIDTH_BPS),          # same zone, no coords
        ("munich", "nowhere", UNKNOWN_RTT_MS, UNKNOWN_BANDWIDTH_BPS),  # unknown location
        ("lab", "virginia", UNKNOWN_RTT_MS, UNKNOWN_BANDWIDTH_BPS),    # no coords, other zone
    ],
)
def test_defaults(a, b, rtt, bw):
    m = model()
    assert m.rtt_ms(a, b) == rtt and m.bandwidth_bps(a, b) == bw


def test_bandwidth_by_zone():
    m = model()
    assert m.bandwidth_bps("munich", "frankfurt") == ZONE_BANDWIDTH_BPS
    assert m.bandwidth_bps("munich", "virginia") == WAN_BANDWIDTH_BPS


def test_configured_link_wins_over_model():
    m = model([Link(a="frankfurt", b="munich", rtt_ms=12.0, bandwidth_bps=2e9)])
    assert m.rtt_ms("munich", "frankfurt") == 12.0
    assert m.bandwidth_bps("munich", "frankfurt") == 2e9
    assert m.source("munich", "frankfurt") == "configured"


def test_measured_overrides_configured():
    m = model([Link(a="munich", b="frankfurt", rtt_ms=12.0, bandwidth_bps=2e9)])
    m.observe("frankfurt", "munich", 7.5)
    assert m.rtt_ms("munich", "frankfurt") == 7.5
    assert m.bandwidth_bps("munich", "frankfurt") == 2e9   # kept: not measured
    assert m.source("munich", "frankfurt") == "measured"
    m.observe("munich", "frankfurt", 8.0, 5e8)
    assert (m.rtt_ms("munich", "frankfurt"), m.bandwidth_bps("munich", "frankfurt")) == (8.0, 5e8)


def test_observe_unknown_pair_and_validation():
    m = model()
    m.observe("camera-1", "munich", 2.0, 100e6)
    assert m.rtt_ms("munich", "camera-1") == 2.0
    assert "camera-1" in m.names()
    with pytest.raises(ValueError, match="rtt_ms"):
        m.observe("a", "b", -1.0)
    with pytest.raises(ValueError, match="bandwidth_bps"):
        m.observe("a", "b", 1.0, 0.0)


def test_links_lists_every_pair_with_source():
    m = model([Link(a="munich", b="garching", rtt_ms=1.0, bandwidth_bps=1e10)])
    m.observe("munich", "frankfurt", 7.0)
    links = {(lk.a, lk.b): lk for lk in m.links()}
    assert len(links) == 10                      # 5 locations → 10 unordered pairs
    assert all(isinstance(lk, Link) for lk in links.values())
    assert links[("garching", "munich")].source == "configured"
    assert links[("frankfurt", "munich")].source == "measured"
    assert links[("frankfurt", "virginia")].source == "modelled"


def test_rtt_matrix():
    mat = model().rtt_matrix(["munich", "frankfurt"])
    assert mat.shape == (2, 2) and mat[0, 0] == LOCAL_RTT_MS and mat[0, 1] == mat[1, 0]


def test_usable_as_placement_network():
    # structural typing: placement's Snapshot accepts it without monitoring importing placement
    from placement import Network, Snapshot

    m = model()
    assert isinstance(m, Network)
    snap = Snapshot(nodes=[], network=m)
    assert snap.rtt_from("munich").shape == (0,)
