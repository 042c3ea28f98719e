"""Keeping a library in step with its folders as they change (``dreamsearch watch``,
``serve --watch``; docs/watch.md): ``settle`` decides when a changed path is ready,
``batches`` turns settled paths into index runs, ``roots`` tells a folder's health,
``loop`` follows the events and runs the batches (``Watcher``), and ``notices`` leaves
the warnings where ``dreamsearch status`` finds them. Nothing is imported here, so that
``status`` reads the notices without the indexer."""
