"""Reading the HTML pages the commands write, as a browser would follow them."""

from __future__ import annotations

from html.parser import HTMLParser


class Links(HTMLParser):
    """Every ``<a href>`` and ``<img src>`` of a page, in order (``feed`` it the page)."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "a":
            self.hrefs.append(dict(attrs)["href"])
        elif tag == "img":
            self.images.append(dict(attrs)["src"])
