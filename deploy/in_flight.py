"""How many decoded pixels the ingress holds at once, across requests.

Each request's images are bounded (`max_image_pixels`, `max_request_pixels`), but a request's
decoded images live until its replies come back, and many requests run at once: 100 concurrent
requests of two 5000 x 5000 PNGs (a few hundred KB each when compressed) would hold 15 GB. Past
`max_pixels_in_flight` a request is answered 503 with Retry-After before anything is decoded.
"""

from __future__ import annotations

from .errors import ApiError


class PixelsInFlight:
    """Used from the ingress's event loop only, so no lock."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def take(self, pixels: int) -> None:
        if self.held + pixels > self.limit:
            raise ApiError(503, f"the service holds {self.held} decoded pixels of other requests, and this "
                                f"one's {pixels} would pass its limit of {self.limit}; retry in a moment",
                           retry_after_s=1)
        self.held += pixels

    def give_back(self, pixels: int) -> None:
        self.held -= pixels
