"""The error types of bcos-zoo's weight handling, in one place.

- :class:`CheckpointError`: a checkpoint file is unreadable, corrupt, unsafe, or does not fit the
  model (whatever the file came from: a path, the cache, a download).
- :class:`DownloadError`: a file could not be *fetched*; :class:`HashMismatchError` (it arrived, but
  is not the promised file) and :class:`OfflineError` (offline mode is on and it is not cached)
  are the two kinds a caller may want to tell apart.
- :class:`TrustOnFirstUseWarning`: a file whose publisher gives no hash was downloaded for the
  first time; its SHA-256 is now what later downloads must match.

Every message names the file or URL and what to do about it.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "DownloadError", "HashMismatchError", "OfflineError", "TrustOnFirstUseWarning"]


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, corrupt or does not fit the model."""


class DownloadError(RuntimeError):
    """A weight file could not be fetched (network error, HTTP error, truncated transfer)."""


class HashMismatchError(DownloadError):
    """A fetched file does not have the SHA-256 its record promises."""


class OfflineError(DownloadError):
    """Offline mode is on and the file is not in the cache."""


class TrustOnFirstUseWarning(UserWarning):
    """A file without a published hash was trusted on its first download (its SHA-256 was recorded)."""
