"""``dreamsearch serve``: the HTTP API and web UI, a second thin shell over ``Library``."""
