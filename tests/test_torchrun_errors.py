"""Under torchrun, a process that loses its peers says so; it is not a bug in polymodal."""

from __future__ import annotations


def test_a_lost_torchrun_peer_is_not_reported_as_a_bug(monkeypatch):
    import torch.distributed as dist

    from polymodal._cli import _peer_lost

    error = dist.DistBackendError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer"
                                  " [127.0.0.1]:29500")
    assert _peer_lost(error) is None  # one process: nothing to blame on a peer
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    message = _peer_lost(error)
    assert message is not None
    assert message.startswith("process 1 of this torchrun job lost contact with another process")
    assert "--resume" in message
    assert _peer_lost(KeyError("x")) is None  # a real bug stays one
