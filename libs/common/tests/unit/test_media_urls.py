"""MediaUrls keeps the URL it made for a key for the rest of the signer's expiry window: the same URL a signer
would make again, or a presigned one still valid for at least the ttl."""

from __future__ import annotations

import pytest

from lumiku_common import media
from lumiku_common.media import MediaSigner, MediaUrls
from lumiku_common.storage import FilesystemStorage

TTL = 600


class PresigningStore(FilesystemStorage):
    """A store that presigns (as a public S3 bucket does), recording each URL it is asked for."""

    def __init__(self, clock: list[float]):
        super().__init__("/nonexistent")
        self.clock, self.asked = clock, []

    def public_url(self, key: str, expires_in: int) -> str | None:
        self.asked.append((key, self.clock[0]))
        return f"https://s3.example/{key}?expires={self.clock[0] + expires_in}"


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [1_000_000.0]
    monkeypatch.setattr(media.time, "time", lambda: now[0])
    return now


def test_a_signed_url_is_the_one_the_signer_makes_and_is_made_once_a_window(clock):
    signer = MediaSigner("k" * 40, TTL)
    urls = MediaUrls(FilesystemStorage("/nonexistent"), signer)
    first = urls.url("avatars/u/a/thumb.jpg")
    assert first == signer.sign("avatars/u/a/thumb.jpg", clock[0])
    window_ends = signer.expiry(clock[0])
    clock[0] = window_ends - TTL - 1  # still in the window: the same URL, not made again
    assert urls.url("avatars/u/a/thumb.jpg") is first
    clock[0] = window_ends - TTL + 1  # the next window: a later expiry
    later = urls.url("avatars/u/a/thumb.jpg")
    assert later != first and later == signer.sign("avatars/u/a/thumb.jpg", clock[0])
    assert signer.verify("avatars/u/a/thumb.jpg", later.split("exp=")[1].split("&")[0], later.split("sig=")[1])


def test_a_presigned_url_kept_for_the_window_stays_valid_for_the_ttl(clock):
    signer = MediaSigner("k" * 40, TTL)
    store = PresigningStore(clock)
    urls = MediaUrls(store, signer)
    window_ends = signer.expiry(clock[0])
    made = urls.url("k1")
    for moment in range(int(clock[0]), int(window_ends - TTL), 7):  # all through the window
        clock[0] = moment
        url = urls.url("k1")
        assert url == made and float(url.split("expires=")[1]) - clock[0] >= TTL
    assert store.asked == [("k1", 1_000_000.0)]
    assert urls.url(None) is None


def test_no_more_keys_are_kept_than_the_bound(clock, monkeypatch):
    monkeypatch.setattr(MediaUrls, "REMEMBERED", 3)
    store = PresigningStore(clock)
    urls = MediaUrls(store, MediaSigner("k" * 40, TTL))
    for key in ("a", "b", "c", "d", "a"):
        urls.url(key)
    assert len(urls._made) <= 3 and [key for key, _ in store.asked] == ["a", "b", "c", "d", "a"]
